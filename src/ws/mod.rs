//! The WebSocket adapter: the endpoints (every check happens before the upgrade), the
//! session loop of one connection, and the frame protocol.

pub mod frames;
pub mod session;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use serde::Deserialize;

use self::session::Peer;
use crate::auth::{authenticate, bearer_token, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::jwt::TokenError;
use crate::service::conversations;
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ws/chat", get(anonymous_chat))
        .route("/ws/chat/{user_id}", get(user_chat))
        .route("/ws/{conversation_id}", get(conversation_chat))
}

/// The token may come in the query, for browsers that cannot set headers.
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    /// A JWT.
    pub token: Option<String>,
}

/// The caller of an authenticated endpoint, from the query token or the bearer header.
struct WsCaller(AuthUser);

impl axum::extract::FromRequestParts<AppState> for WsCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let ApiQuery(query) = ApiQuery::<TokenQuery>::from_request_parts(parts, state).await?;
        let token = query
            .token
            .filter(|t| !t.is_empty())
            .or_else(|| bearer_token(parts).map(str::to_owned))
            .ok_or(TokenError::Missing)?;
        Ok(Self(authenticate(state, &token).await?))
    }
}

/// Initial read buffer and write batching size of a WebSocket: small, so ten thousand idle
/// connections stay cheap; the buffers grow for the frames that need it.
const WS_BUFFER_BYTES: usize = 1024;

fn upgrade(state: AppState, ws: WebSocketUpgrade, peer: Peer) -> Response {
    let limit = state.settings.limits.ws_max_frame_bytes;
    // Small buffers keep thousands of idle connections cheap; they grow for large frames.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES)
        .on_upgrade(move |socket: WebSocket| {
            let (sink, stream) = socket.split();
            session::run(state, peer, stream, sink)
        })
}

/// Anonymous chat; its conversations belong to no user.
async fn anonymous_chat(
    State(state): State<AppState>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    if !state.settings.allow_anonymous_ws {
        return Err(ApiError::Forbidden(
            "Anonymous chat is disabled; connect with a token".to_owned(),
        ));
    }
    let peer = Peer {
        user: None,
        bound: None,
    };
    Ok(upgrade(state, ws, peer))
}

/// A user's chat; `{user_id}` must be the token's username or public ID.
async fn user_chat(
    State(state): State<AppState>,
    WsCaller(caller): WsCaller,
    ApiPath(user_id): ApiPath<String>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let own =
        user_id == caller.user.username || state.ids.user.decode(&user_id) == Some(caller.user.id);
    if !own {
        return Err(ApiError::forbidden());
    }
    let peer = Peer {
        user: Some(caller),
        bound: None,
    };
    Ok(upgrade(state, ws, peer))
}

/// A connection bound to one conversation of the caller's (or any, for admins).
async fn conversation_chat(
    State(state): State<AppState>,
    WsCaller(caller): WsCaller,
    ApiPath(conversation_id): ApiPath<String>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let key = crate::routes::conversation_key(&state, &conversation_id)?;
    conversations::load(&state, caller.write_scope(), key).await?;
    let peer = Peer {
        user: Some(caller),
        bound: Some(key),
    };
    Ok(upgrade(state, ws, peer))
}
