//! The use cases that several adapters share: conversations (create, load, end, delete) and
//! one chat turn. Adapters (REST routes, the WebSocket session, SSE) parse their input, call
//! these, and render what comes back; nothing here knows of HTTP, frames or SSE.

pub mod api_keys;
pub mod branches;
pub mod chat;
pub mod completions;
pub mod conversations;
pub mod recovery;
pub mod reply;
pub mod search;
pub mod titles;
pub mod tools;
pub mod usage;
pub mod users;
pub mod validate;

use crate::chat::hub::GenerationRefused;
use crate::chat::llm::LlmError;
use crate::db::StoreError;

/// Why a use case failed. Every message but the store's is safe to show; a store error is
/// logged by the adapter and answered generically.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Unknown, malformed or someone else's resource; names its kind.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The conversation has ended.
    #[error("Conversation has ended; reconnect to continue it")]
    Ended,
    /// Input that fails validation: `field: reason`.
    #[error("{0}")]
    Invalid(String),
    /// A generation limit.
    #[error(transparent)]
    Busy(#[from] GenerationRefused),
    /// A usage limit (message rate, token budget).
    #[error(transparent)]
    Limited(usage::Refusal),
    /// The LLM failed.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The service stopped before the reply could finish.
    #[error("{}", recovery::SERVICE_RESTARTED)]
    Interrupted,
    /// The database failed.
    #[error("Internal error")]
    Store(#[from] StoreError),
}

impl ServiceError {
    /// Input that fails validation, naming the field.
    pub fn invalid(field: &str, reason: &str) -> Self {
        Self::Invalid(format!("{field}: {reason}"))
    }
}

/// Result of a use case.
pub type ServiceResult<T> = Result<T, ServiceError>;
