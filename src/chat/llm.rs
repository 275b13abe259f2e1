//! The LLM provider seam: plain chat types, the [`LlmProvider`] trait, its errors, and the
//! choice of provider from the settings.
//!
//! Two providers exist: [`OpenAiProvider`] for any OpenAI-compatible server, and the offline
//! [`EchoProvider`] that lets the service run (and be tested) without an API key.

mod echo;
mod openai;
pub mod tokens;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::config::{LlmProviderKind, LlmSettings};

pub use echo::EchoProvider;
pub use openai::OpenAiProvider;

/// Who wrote a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// Instructions that frame the conversation.
    System,
    /// The person chatting.
    User,
    /// The model.
    Assistant,
    /// The result of a tool the model called.
    Tool,
}

/// A call of a tool that the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The model's id of the call, which its result refers to.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, as JSON text written by the model (not necessarily valid).
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Its name (`[a-zA-Z0-9_-]{1,64}`).
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// Its arguments, as a JSON Schema object.
    pub parameters: serde_json::Value,
}

/// One message of the history sent to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurn {
    /// Who wrote it.
    pub role: ChatRole,
    /// What was written.
    pub content: String,
    /// The calls an assistant turn asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool turn answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatTurn {
    /// A message with the given role and content.
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// The model's turn that asked for tool calls (with whatever text came with them).
    pub fn tool_request(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::new(ChatRole::Assistant, content)
        }
    }

    /// A tool's result for the call `id`.
    pub fn tool_result(id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(id.into()),
            ..Self::new(ChatRole::Tool, content)
        }
    }
}

/// What a request is for: a reply in a conversation, or a title for one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A reply to the user.
    #[default]
    Reply,
    /// A conversation's title, written from its first exchange.
    Title,
}

/// What to ask the model: which model, the (already trimmed) messages, the tools it may
/// call, and the settings a client chose.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionRequest {
    /// Model name, e.g. `gpt-4o-mini`.
    pub model: String,
    /// Chronological messages, system message first when there is one.
    pub messages: Vec<ChatTurn>,
    /// Tools offered; empty for none.
    pub tools: Vec<ToolSpec>,
    /// Tokens the reply may take; `None`: `OPENAI_MAX_TOKENS`.
    pub max_tokens: Option<u32>,
    /// What the request is for.
    pub purpose: Purpose,
    /// Sampling and tool settings; the defaults leave the provider's configuration.
    pub options: CompletionOptions,
}

/// Settings a client of the OpenAI-compatible API may choose for its request; `None` (or
/// empty) keeps the service's own (`OPENAI_TEMPERATURE`) or the provider's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionOptions {
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Sequences that end the reply.
    pub stop: Vec<String>,
    /// Which tool, if any, the model must call.
    pub tool_choice: Option<ToolChoice>,
    /// The end user, for the provider's abuse monitoring.
    pub user: Option<String>,
}

/// Which tool, if any, the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No tool: a text answer.
    None,
    /// The model decides.
    Auto,
    /// Some tool.
    Required,
    /// This tool.
    Function(String),
}

/// Token counts of one completion, as reported by the provider, or estimated where it
/// reported none ([`tokens::estimate_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u32,
    /// Tokens of the reply.
    pub completion_tokens: u32,
    /// Prompt plus reply.
    pub total_tokens: u32,
    /// The counts are estimates: the provider reported none.
    #[serde(default)]
    pub estimated: bool,
}

/// One item of a streamed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmEvent {
    /// The next piece of the reply's text.
    Delta(String),
    /// Token usage of the whole request; normally sent once, after the last delta. If a
    /// server sends it more than once, the last one is the total. A stream that ends
    /// normally always ends with one (estimated when the server reported none); a stream cut
    /// short may not.
    Usage(Usage),
    /// The model asks for these tool calls (sent once, when its answer is complete).
    ToolCalls(Vec<ToolCall>),
    /// Why the model stopped, by OpenAI's name for it (`stop`, `length`, `tool_calls`,
    /// `content_filter`); sent once, after the text and calls, when the provider says.
    Finished(String),
    /// The provider cut the reply at one of its bounds (tool-call arguments past
    /// `MCP_MAX_ARGUMENT_CHARS`) and cancelled the request: what came before is the whole
    /// reply, to be kept as truncated. Nothing follows.
    Truncated,
}

/// A streamed reply. Errors after the first item (a connection that breaks mid-way, a
/// timeout) arrive as an `Err` item; the stream ends after it. Dropping the stream cancels
/// the generation (the HTTP connection is closed).
pub type LlmStream = BoxStream<'static, Result<LlmEvent, LlmError>>;

/// A collected reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// The whole reply text.
    pub text: String,
    /// Token usage, when the provider reported it.
    pub usage: Option<Usage>,
    /// Tool calls the model asked for.
    pub tool_calls: Vec<ToolCall>,
}

/// Why a reply could not be produced.
///
/// The `Display` text of every variant is a safe, human message meant for the end user: it
/// never contains the API key, the provider's raw response body, or URLs. Details go to the
/// logs (without secrets) where the error is first seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// The provider kept answering 429 after all retries.
    #[error("The AI service is receiving too many requests. Please try again in a moment.")]
    RateLimited,
    /// The provider account has no quota left (a 429 that retrying cannot fix).
    #[error("The AI service quota is exhausted. Please contact the administrator.")]
    QuotaExceeded,
    /// The provider rejected the service's credentials (401/403).
    #[error(
        "The AI service rejected the service's credentials. Please contact the administrator."
    )]
    Unauthorized,
    /// The conversation is longer than the model's context window.
    #[error("The conversation is too long for the model. Please start a new conversation.")]
    ContextTooLong,
    /// The provider could not be reached, or answered 5xx, after all retries.
    #[error("The AI service is unavailable. Please try again later.")]
    Unavailable,
    /// The provider did not answer within the configured timeout.
    #[error("The AI service did not answer in time. Please try again.")]
    Timeout,
    /// The provider refused the request with another 4xx status.
    #[error("The AI service refused the request (HTTP {0}).")]
    Rejected(u16),
    /// The provider answered something that is not a chat completion.
    #[error("The AI service sent a response that could not be read.")]
    BadResponse,
    /// The reply stream broke after part of the reply had arrived.
    #[error("The AI service stopped answering mid-reply. Please try again.")]
    Interrupted,
}

impl LlmError {
    /// A short stable code for metrics labels and logs, e.g. `rate_limited`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Unauthorized => "unauthorized",
            Self::ContextTooLong => "context_too_long",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Rejected(_) => "rejected",
            Self::BadResponse => "bad_response",
            Self::Interrupted => "interrupted",
        }
    }
}

/// The provider could not be built from the settings; a start-up error.
#[derive(Debug, thiserror::Error)]
pub enum ProviderBuildError {
    /// The base URL is not an absolute `http` or `https` URL.
    #[error("OPENAI_BASE_URL is not a valid http(s) URL")]
    InvalidBaseUrl,
    /// The API key cannot be sent in an HTTP header (control characters or non-ASCII).
    #[error("OPENAI_API_KEY contains characters that cannot be sent in an HTTP header")]
    InvalidApiKey,
    /// The HTTP client could not be created (TLS initialisation).
    #[error("could not build the HTTP client of the LLM provider: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// Something that turns a conversation into a streamed reply.
#[async_trait]
pub trait LlmProvider: Send + Sync {
    /// The provider's name as reported by `/health`: `openai` or `echo`.
    fn name(&self) -> &'static str;

    /// Starts a reply. Failures before any text arrived (after the provider's retries) are
    /// the `Err` of this call; later failures are an `Err` item of the stream.
    async fn stream(&self, request: &CompletionRequest) -> Result<LlmStream, LlmError>;

    /// Produces a whole reply by collecting [`stream`](Self::stream).
    async fn complete(&self, request: &CompletionRequest) -> Result<Completion, LlmError> {
        collect(self.stream(request).await?).await
    }
}

/// Collects a reply stream into its text and usage; the first `Err` item is returned.
pub async fn collect(mut stream: LlmStream) -> Result<Completion, LlmError> {
    let mut completion = Completion::default();
    while let Some(event) = stream.next().await {
        match event? {
            LlmEvent::Delta(delta) => completion.text.push_str(&delta),
            LlmEvent::Usage(usage) => completion.usage = Some(usage),
            LlmEvent::ToolCalls(calls) => completion.tool_calls.extend(calls),
            LlmEvent::Finished(_) => {}
            // The stream ends with it; the text so far is the reply.
            LlmEvent::Truncated => {}
        }
    }
    Ok(completion)
}

/// Builds the provider chosen by the settings, once, at start.
pub fn build_provider(settings: &LlmSettings) -> Result<Arc<dyn LlmProvider>, ProviderBuildError> {
    Ok(match settings.provider {
        LlmProviderKind::OpenAi => Arc::new(OpenAiProvider::new(settings)?),
        LlmProviderKind::Echo => Arc::new(EchoProvider::new()),
    })
}
