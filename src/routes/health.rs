//! Service information and health.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::chat::hub::HubBackend;
use crate::config::{LlmProviderKind, LlmSettings, DEFAULT_OPENAI_BASE_URL};
use crate::state::AppState;

/// Version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Public routes at the root.
pub fn root_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(service_info))
        .routes(routes!(health))
}

/// Public routes under `/api/v1`.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(chat_health))
}

/// What the service is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceInfo {
    /// Name.
    pub service: &'static str,
    /// Version.
    pub version: &'static str,
    /// Always `running`.
    pub status: &'static str,
    /// Where the API docs are.
    pub docs: &'static str,
}

/// Health of the service and its database.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `healthy` or `unhealthy`.
    pub status: &'static str,
    /// `connected` or `unreachable`.
    pub database: &'static str,
    /// `openai` or `echo`.
    pub llm_provider: &'static str,
    /// Default model.
    pub llm_model: String,
    /// The live-chat hub's Redis: `connected`, `unreachable` (chat then works on this
    /// instance alone; the service stays healthy) or `not_configured`.
    pub redis: &'static str,
    /// Version.
    pub version: &'static str,
    /// Time of the check.
    pub timestamp: DateTime<Utc>,
}

/// Health of the chat part.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatHealth {
    /// Always `healthy` when answering.
    pub status: &'static str,
    /// `openai` or `echo`.
    pub llm_provider: &'static str,
    /// Default model.
    pub llm_model: String,
    /// Models a conversation may choose.
    pub allowed_models: Vec<String>,
    /// Always `active` when answering (the original's field).
    pub chat_service: &'static str,
    /// `configured` when the OpenAI-compatible provider has a key or a base URL of its own;
    /// `not_configured` otherwise (the offline provider answers).
    pub openai_api: &'static str,
    /// Always `active`: the WebSocket endpoints are served (the original's field).
    pub websocket_connections: &'static str,
}

/// Service information.
#[utoipa::path(get, path = "/", tag = "health", responses((status = 200, body = ServiceInfo)))]
async fn service_info() -> Json<ServiceInfo> {
    Json(ServiceInfo {
        service: "chat-service",
        version: VERSION,
        status: "running",
        docs: "/docs",
    })
}

/// Health with a real database round trip; 503 when the database does not answer.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The database answers", body = Health),
        (status = 503, description = "The database does not answer", body = Health)))]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let database_ok = state.health.database_ok(&state.store).await;
    let status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if database_ok { "healthy" } else { "unhealthy" },
        database: if database_ok {
            "connected"
        } else {
            "unreachable"
        },
        llm_provider: state.llm.name(),
        llm_model: state.settings.llm.model.clone(),
        redis: match state.hub.backend() {
            HubBackend::Local => "not_configured",
            HubBackend::Redis { up: true } => "connected",
            HubBackend::Redis { up: false } => "unreachable",
        },
        version: VERSION,
        timestamp: Utc::now(),
    };
    (status, Json(body))
}

/// Health of the chat part.
#[utoipa::path(get, path = "/chat/health", tag = "health",
    responses((status = 200, body = ChatHealth)))]
async fn chat_health(State(state): State<AppState>) -> Json<ChatHealth> {
    Json(ChatHealth {
        status: "healthy",
        llm_provider: state.llm.name(),
        llm_model: state.settings.llm.model.clone(),
        allowed_models: state.settings.llm.allowed_models.clone(),
        chat_service: "active",
        openai_api: if openai_configured(&state.settings.llm) {
            "configured"
        } else {
            "not_configured"
        },
        websocket_connections: "active",
    })
}

/// Whether replies come from an OpenAI-compatible server that can answer: one with a key, or
/// one of the operator's own (which may need none).
fn openai_configured(llm: &LlmSettings) -> bool {
    llm.provider == LlmProviderKind::OpenAi
        && (llm.api_key.is_some() || llm.base_url != DEFAULT_OPENAI_BASE_URL)
}
