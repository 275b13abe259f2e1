//! What can go wrong when reaching an MCP server, worded for the model (`Display`) with the
//! technical cause kept as the error's source for the log.

use std::time::Duration;

use rmcp::service::{ClientInitializeError, ServiceError};

use super::guard::GuardError;

/// A failed list or call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum McpError {
    /// Refused by the address guard, or not a usable URL.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// The whole list or call took longer than the timeout.
    #[error("the server did not answer within {} seconds", .0.as_secs_f32())]
    Timeout(Duration),
    /// The server's answers passed the byte bound (`MCP_MAX_RESPONSE_BYTES`).
    #[error("the server's answer was larger than {0} bytes")]
    TooLarge(usize),
    /// The session could not be opened.
    #[error("the server could not be reached or did not answer as an MCP server")]
    Connect(#[source] Box<ClientInitializeError>),
    /// The server answered the request with a JSON-RPC error.
    #[error("the server answered with an error: {0}")]
    Rpc(String),
    /// The request failed in the transport or the answer could not be read.
    #[error("the server's answer could not be used")]
    Protocol(#[source] ServiceError),
    /// The answer was not the one the request calls for.
    #[error("the server's answer could not be used")]
    UnexpectedAnswer,
    /// `tools/list` kept returning a next page.
    #[error("the server listed too many pages of tools")]
    TooManyPages,
    /// The tool ran and reported an error (its own words, already cut to size).
    #[error("{0}")]
    Tool(String),
    /// The model gave arguments that are not a JSON object.
    #[error("its arguments must be a JSON object")]
    Arguments,
    /// The tool was listed for another server than the one it is called on.
    #[error("the tool does not belong to this server")]
    WrongServer,
}

impl From<ServiceError> for McpError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::McpError(data) => Self::Rpc(shorten(&data.message)),
            other => Self::Protocol(other),
        }
    }
}

/// Longest server error message passed on, in characters.
const MAX_SERVER_MESSAGE_CHARS: usize = 500;

/// A server's error message, cut to [`MAX_SERVER_MESSAGE_CHARS`].
fn shorten(message: &str) -> String {
    match message.char_indices().nth(MAX_SERVER_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message.to_owned(),
    }
}
