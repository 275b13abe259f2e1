//! The WebSocket adapter: the endpoints (every check happens before the upgrade), one
//! connection's task (`connection`), what its frames do (`session`), and the frame protocol.

pub mod connection;
pub mod frames;
pub mod session;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::FutureExt;
use serde::Deserialize;

use std::net::IpAddr;

use axum::http::header;

use self::session::Peer;
use crate::auth::{authenticate, bearer_token, AuthUser};
use crate::chat::hub::AnonymousPass;
use crate::client_ip::client_address;
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
        let caller = authenticate(state, &token).await?;
        crate::connections::mark_authenticated(&parts.extensions);
        Ok(Self(caller))
    }
}

/// Refuses upgrades from browsers on origins that are not allowed (`WS_ALLOWED_ORIGINS`,
/// else `CORS_ORIGINS`); clients that send no `Origin` (not browsers) pass.
struct AllowedOrigin;

impl axum::extract::FromRequestParts<AppState> for AllowedOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let allowed = &state.settings.limits.ws_allowed_origins;
        let Some(origin) = parts.headers.get(header::ORIGIN) else {
            return Ok(Self);
        };
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        let open = allowed.is_empty() || allowed.iter().any(|o| o == "*");
        if open || allowed.iter().any(|o| o.trim_end_matches('/') == origin) {
            Ok(Self)
        } else {
            Err(ApiError::Forbidden(
                "This origin may not open WebSockets here".to_owned(),
            ))
        }
    }
}

/// The client address of an upgrade, as `TRUSTED_PROXIES` allow it to be known.
struct ClientAddress(Option<IpAddr>);

impl axum::extract::FromRequestParts<AppState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let trusted = &state.settings.trusted_proxies;
        Ok(Self(client_address(
            &parts.extensions,
            &parts.headers,
            trusted,
        )))
    }
}

/// A WebSocket's read buffer, allocated for every connection: small, so ten thousand idle
/// connections stay cheap. A frame's whole length is reserved once its header is read, so
/// frame limits hold; a frame longer than this takes more than one read.
const WS_READ_BUFFER_BYTES: usize = 256;
/// How much a connection batches before writing (its buffer grows only when written to).
const WS_WRITE_BUFFER_BYTES: usize = 1024;

fn upgrade(state: AppState, ws: WebSocketUpgrade, peer: Peer) -> Response {
    upgrade_holding(state, ws, peer, None)
}

/// Upgrades, keeping `pass` (an anonymous connection's place) for the connection's life.
fn upgrade_holding(
    state: AppState,
    ws: WebSocketUpgrade,
    peer: Peer,
    pass: Option<AnonymousPass>,
) -> Response {
    let limit = state.settings.limits.ws_max_frame_bytes;
    // Boxed until the upgrade: the upgrade's task keeps the callback's captures for the
    // connection's whole life, beside the future the callback returns.
    let setup = Box::new((state, peer, pass));
    // Small buffers keep thousands of idle connections cheap; they grow for large frames.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket: WebSocket| {
            let (state, peer, pass) = *setup;
            let run = session::run(state, peer, socket);
            // The anonymous place is given back when the connection ends.
            run.map(move |()| drop(pass))
        })
}

/// Anonymous chat; its conversations belong to no user.
async fn anonymous_chat(
    State(state): State<AppState>,
    _origin: AllowedOrigin,
    ClientAddress(address): ClientAddress,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    if !state.settings.allow_anonymous_ws {
        return Err(ApiError::Forbidden(
            "Anonymous chat is disabled; connect with a token".to_owned(),
        ));
    }
    // Without a known address (no peer address at all) the connection counts as one
    // unnamed address, which keeps the cap.
    let address = address.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let limit = state.settings.limits.anon_max_connections_per_ip;
    let Some(pass) = state.hub.anonymous.admit(address, limit).await else {
        return Err(ApiError::TooManyRequests(
            "Too many anonymous connections from this address".to_owned(),
        ));
    };
    let peer = Peer {
        user: None,
        bound: None,
        address: Some(address),
    };
    Ok(upgrade_holding(state, ws, peer, Some(pass)))
}

/// A user's chat; `{user_id}` must be the token's username or public ID.
async fn user_chat(
    State(state): State<AppState>,
    _origin: AllowedOrigin,
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
        address: None,
    };
    Ok(upgrade(state, ws, peer))
}

/// A connection bound to one conversation of the caller's (or any, for admins).
async fn conversation_chat(
    State(state): State<AppState>,
    _origin: AllowedOrigin,
    WsCaller(caller): WsCaller,
    ApiPath(conversation_id): ApiPath<String>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let key = crate::extract::conversation_key(&state, &conversation_id)?;
    conversations::load(&state, caller.write_scope(), key).await?;
    let peer = Peer {
        user: Some(caller),
        bound: Some(key),
        address: None,
    };
    Ok(upgrade(state, ws, peer))
}
