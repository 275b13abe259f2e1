//! The provider for OpenAI and OpenAI-compatible servers (vLLM, Ollama, llama.cpp, ...).
//!
//! Requests, stream chunks and error bodies use async-openai's wire types. The HTTP exchange
//! itself is driven here rather than through `async_openai::Client`'s `create_stream`, because
//! that path (reqwest-eventsource) turns the status and headers of a failed response into a
//! string, so `Retry-After` cannot be honoured nor a 429 told from a 400; and it reconnects on
//! its own, without limit, whenever the stream breaks or the server is unreachable, re-sending
//! the request, which would duplicate a half-generated reply (and its cost).
//!
//! What a server sends is bounded as it is read: one event's size (`OPENAI_MAX_EVENT_BYTES`),
//! the tool calls of a round (`MCP_MAX_TOOL_CALLS`) and their arguments
//! (`MCP_MAX_ARGUMENT_CHARS`), so a broken or hostile server can neither grow the service's
//! memory nor keep it scanning.

mod sse;
mod tool_calls;

use std::collections::VecDeque;
use std::time::Duration;

use async_openai::error::WrappedError;
use async_openai::types::{
    ChatCompletionMessageToolCall, ChatCompletionNamedToolChoice,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestToolMessage, ChatCompletionRequestToolMessageContent,
    ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, ChatCompletionTool,
    ChatCompletionToolChoiceOption, ChatCompletionToolType, CreateChatCompletionRequest,
    CreateChatCompletionStreamResponse, FunctionCall, FunctionName, FunctionObject, Stop,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Url;
use tracing::{debug, warn};

use super::tokens::{estimate_turns_tokens, estimate_usage};
use super::{
    ChatRole, ChatTurn, CompletionRequest, LlmError, LlmEvent, LlmProvider, LlmStream,
    ProviderBuildError, ToolCall, ToolChoice, ToolSpec, Usage,
};
use crate::config::LlmSettings;
use crate::telemetry::error_chain;
use sse::{SseDecoder, SseError};
use tool_calls::{Overflow, ToolCalls};

/// Longest wait honoured from a `Retry-After` header; a server asking for more gets this,
/// so one chat reply never waits minutes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Longest computed backoff delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait for a TCP/TLS connection; the first-token timeout still applies.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams chat completions from an OpenAI-compatible `/chat/completions` endpoint, with
/// retries on 429, 408, 5xx and connection errors that happen before any text arrived.
///
/// Built once at start; cheap to share behind an `Arc` (the HTTP client pools connections).
#[derive(Debug)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    url: Url,
    /// `Bearer <key>`, marked sensitive so it never shows in `Debug` output.
    authorization: Option<HeaderValue>,
    temperature: f32,
    max_tokens: u32,
    max_retries: u32,
    retry_base_delay: Duration,
    /// Bound of one attempt up to its first event; the stream's pace after that is the
    /// caller's to bound.
    first_token_timeout: Duration,
    /// Bounds of what one reply may send.
    bounds: ReplyBounds,
}

/// Bounds of what one reply may send, from the settings.
#[derive(Debug, Clone, Copy)]
struct ReplyBounds {
    max_event_bytes: usize,
    max_tool_calls: usize,
    max_argument_chars: usize,
}

impl OpenAiProvider {
    /// Builds the provider and its HTTP client from the settings.
    ///
    /// `settings.timeout` bounds one attempt from connecting to its first event; a reply that
    /// streams longer is not cut by it.
    pub fn new(settings: &LlmSettings) -> Result<Self, ProviderBuildError> {
        let url = Url::parse(&format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        ))
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or(ProviderBuildError::InvalidBaseUrl)?;

        let authorization = settings
            .api_key
            .as_ref()
            .map(|key| {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| ProviderBuildError::InvalidApiKey)?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;

        let http = reqwest::Client::builder()
            .user_agent(concat!("chat-service/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT.min(settings.timeout))
            .build()
            .map_err(ProviderBuildError::HttpClient)?;

        Ok(Self {
            http,
            url,
            authorization,
            temperature: settings.temperature,
            max_tokens: settings.max_tokens,
            max_retries: settings.max_retries,
            retry_base_delay: settings.retry_base_delay,
            first_token_timeout: settings.timeout,
            bounds: ReplyBounds {
                max_event_bytes: settings.max_event_bytes,
                max_tool_calls: settings.max_tool_calls,
                max_argument_chars: settings.max_argument_chars,
            },
        })
    }

    // `max_tokens` is deprecated by OpenAI in favour of `max_completion_tokens`, but it is the
    // field that every OpenAI-compatible server understands.
    #[allow(deprecated)]
    fn wire_request(&self, request: &CompletionRequest) -> CreateChatCompletionRequest {
        let options = &request.options;
        let stop = match options.stop.as_slice() {
            [] => None,
            [one] => Some(Stop::String(one.clone())),
            many => Some(Stop::StringArray(many.to_vec())),
        };
        CreateChatCompletionRequest {
            model: request.model.clone(),
            messages: request.messages.iter().map(wire_message).collect(),
            stream: Some(true),
            stream_options: Some(ChatCompletionStreamOptions {
                include_usage: true,
            }),
            temperature: Some(options.temperature.unwrap_or(self.temperature)),
            top_p: options.top_p,
            max_tokens: Some(request.max_tokens.unwrap_or(self.max_tokens)),
            stop,
            tools: (!request.tools.is_empty())
                .then(|| request.tools.iter().map(wire_tool).collect()),
            tool_choice: options.tool_choice.as_ref().map(wire_tool_choice),
            user: options.user.clone(),
            ..Default::default()
        }
    }

    /// One HTTP exchange, up to the first event of the reply. `prompt_estimate`: the
    /// prompt's estimated tokens, for a server that reports no usage.
    async fn attempt(
        &self,
        body: &CreateChatCompletionRequest,
        prompt_estimate: usize,
    ) -> Result<LlmStream, Attempt> {
        let mut builder = self
            .http
            .post(self.url.clone())
            .header(ACCEPT, "text/event-stream")
            .json(body);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        let response = builder.send().await.map_err(send_failure)?;

        let status = response.status();
        if !status.is_success() {
            return Err(status_failure(response).await);
        }
        if !is_event_stream(response.headers()) {
            warn!(
                status = status.as_u16(),
                "LLM answered a streaming request without an event stream"
            );
            return Err(Attempt::Fail(LlmError::BadResponse));
        }

        // Read up to the first text (or the end) before handing the stream out: a connection
        // that fails before the caller has seen anything can still be retried safely.
        let mut reply = Reply::new(response, self.bounds, prompt_estimate);
        match reply.fill().await {
            Ok(()) => Ok(reply.into_stream()),
            Err(StreamFailure::Transport(e)) if e.is_timeout() => {
                Err(Attempt::Fail(LlmError::Timeout))
            }
            Err(failure @ StreamFailure::Unreadable(_)) => {
                failure.log("LLM stream unreadable before any text");
                Err(Attempt::Fail(LlmError::BadResponse))
            }
            Err(failure) => {
                failure.log("LLM stream failed before any text");
                Err(Attempt::Retry {
                    error: LlmError::Unavailable,
                    after: None,
                })
            }
        }
    }
}

#[async_trait]
impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }

    #[tracing::instrument(
        name = "llm.stream",
        skip_all,
        fields(provider = "openai", model = %request.model, messages = request.messages.len())
    )]
    async fn stream(&self, request: &CompletionRequest) -> Result<LlmStream, LlmError> {
        let body = self.wire_request(request);
        let prompt_estimate = estimate_turns_tokens(&request.messages);
        let mut retries = 0;
        loop {
            let attempt = tokio::time::timeout(
                self.first_token_timeout,
                self.attempt(&body, prompt_estimate),
            );
            let attempt = attempt
                .await
                .unwrap_or(Err(Attempt::Fail(LlmError::Timeout)));
            let (error, after) = match attempt {
                Ok(stream) => return Ok(stream),
                Err(Attempt::Fail(error)) => return Err(error),
                Err(Attempt::Retry { error, after }) => (error, after),
            };
            if retries >= self.max_retries {
                warn!(
                    retries,
                    reason = error.code(),
                    "LLM request failed; giving up"
                );
                return Err(error);
            }
            let delay = after.unwrap_or_else(|| backoff_delay(self.retry_base_delay, retries));
            retries += 1;
            warn!(
                retry = retries,
                max_retries = self.max_retries,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                reason = error.code(),
                "retrying LLM request"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// The outcome of a failed attempt.
enum Attempt {
    /// Worth trying again, after `after` when the server said so.
    Retry {
        error: LlmError,
        after: Option<Duration>,
    },
    /// Retrying cannot help.
    Fail(LlmError),
}

fn wire_message(turn: &ChatTurn) -> ChatCompletionRequestMessage {
    let content = turn.content.clone();
    match turn.role {
        ChatRole::System => ChatCompletionRequestSystemMessage::from(content).into(),
        ChatRole::User => ChatCompletionRequestUserMessage::from(content).into(),
        ChatRole::Assistant if !turn.tool_calls.is_empty() => {
            ChatCompletionRequestAssistantMessage {
                content: (!content.is_empty())
                    .then(|| ChatCompletionRequestAssistantMessageContent::from(content)),
                tool_calls: Some(turn.tool_calls.iter().map(wire_tool_call).collect()),
                ..Default::default()
            }
            .into()
        }
        ChatRole::Assistant => ChatCompletionRequestAssistantMessage::from(
            ChatCompletionRequestAssistantMessageContent::from(content),
        )
        .into(),
        ChatRole::Tool => ChatCompletionRequestToolMessage {
            content: ChatCompletionRequestToolMessageContent::Text(content),
            tool_call_id: turn.tool_call_id.clone().unwrap_or_default(),
        }
        .into(),
    }
}

fn wire_tool_call(call: &ToolCall) -> ChatCompletionMessageToolCall {
    ChatCompletionMessageToolCall {
        id: call.id.clone(),
        r#type: ChatCompletionToolType::Function,
        function: FunctionCall {
            name: call.name.clone(),
            arguments: call.arguments.clone(),
        },
    }
}

fn wire_tool_choice(choice: &ToolChoice) -> ChatCompletionToolChoiceOption {
    match choice {
        ToolChoice::None => ChatCompletionToolChoiceOption::None,
        ToolChoice::Auto => ChatCompletionToolChoiceOption::Auto,
        ToolChoice::Required => ChatCompletionToolChoiceOption::Required,
        ToolChoice::Function(name) => {
            ChatCompletionToolChoiceOption::Named(ChatCompletionNamedToolChoice {
                r#type: ChatCompletionToolType::Function,
                function: FunctionName { name: name.clone() },
            })
        }
    }
}

fn wire_tool(tool: &ToolSpec) -> ChatCompletionTool {
    ChatCompletionTool {
        r#type: ChatCompletionToolType::Function,
        function: FunctionObject {
            name: tool.name.clone(),
            description: tool.description.clone(),
            parameters: Some(tool.parameters.clone()),
            strict: None,
        },
    }
}

/// Classifies an error of sending the request (no response at all).
fn send_failure(error: reqwest::Error) -> Attempt {
    // The URL is configuration, but it may carry credentials in its user part: keep it out.
    let error = error.without_url();
    let detail = error_chain(&error);
    if error.is_connect() {
        warn!(error = %detail, "could not connect to the LLM");
        Attempt::Retry {
            error: LlmError::Unavailable,
            after: None,
        }
    } else if error.is_timeout() {
        warn!("LLM request timed out");
        Attempt::Fail(LlmError::Timeout)
    } else if error.is_builder() {
        warn!(error = %detail, "could not build the LLM request");
        Attempt::Fail(LlmError::Unavailable)
    } else {
        // The connection was reset or closed before a response: a connection error too.
        warn!(error = %detail, "LLM request failed before a response");
        Attempt::Retry {
            error: LlmError::Unavailable,
            after: None,
        }
    }
}

/// Classifies a non-2xx response. Only the provider's error `type` and `code` are logged:
/// its `message` may quote the (masked) key or the user's text.
async fn status_failure(response: reqwest::Response) -> Attempt {
    let status = response.status().as_u16();
    let after = retry_after(response.headers());
    let api_error = response
        .bytes()
        .await
        .ok()
        .and_then(|body| serde_json::from_slice::<WrappedError>(&body).ok())
        .map(|wrapped| wrapped.error);
    let error_type = api_error.as_ref().and_then(|e| e.r#type.as_deref());
    let error_code = api_error.as_ref().and_then(|e| e.code.as_deref());
    warn!(
        status,
        error_type, error_code, "LLM answered with an error status"
    );

    let is = |name: &str| error_type == Some(name) || error_code == Some(name);
    let context_too_long = is("context_length_exceeded")
        || api_error
            .as_ref()
            .is_some_and(|e| e.message.to_ascii_lowercase().contains("context length"));
    match status {
        429 if is("insufficient_quota") => Attempt::Fail(LlmError::QuotaExceeded),
        429 => Attempt::Retry {
            error: LlmError::RateLimited,
            after,
        },
        408 => Attempt::Retry {
            error: LlmError::Timeout,
            after,
        },
        500..=599 => Attempt::Retry {
            error: LlmError::Unavailable,
            after,
        },
        401 | 403 => Attempt::Fail(LlmError::Unauthorized),
        413 => Attempt::Fail(LlmError::ContextTooLong),
        400 if context_too_long => Attempt::Fail(LlmError::ContextTooLong),
        _ => Attempt::Fail(LlmError::Rejected(status)),
    }
}

/// The wait a server asked for: `retry-after-ms` (sent by OpenAI) or `Retry-After` in
/// seconds, capped at [`MAX_RETRY_AFTER`]. The HTTP-date form is not used by LLM servers and
/// falls back to the computed backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    let seconds = number("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| number(RETRY_AFTER.as_str()))?;
    Some(Duration::from_secs_f64(
        seconds.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}

/// Exponential backoff with jitter: `base * 2^retry`, capped, then scaled by a random factor
/// in `[0.5, 1.0]` so that many clients limited at once do not retry in lockstep.
fn backoff_delay(base: Duration, retry: u32) -> Duration {
    let exponential = base
        .checked_mul(2u32.saturating_pow(retry))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF);
    exponential.mul_f64(rand::rng().random_range(0.5..=1.0))
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    // A missing Content-Type is tolerated: some small servers omit it and the body parser
    // still rejects anything that is not a chat-completion stream.
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// The bytes of a response's body.
type BodyBytes = BoxStream<'static, Result<Bytes, reqwest::Error>>;

/// Why the body of a started reply could not be read further.
enum StreamFailure {
    /// The connection broke or timed out.
    Transport(reqwest::Error),
    /// The body is not a chat-completion event stream the service reads, for this cause: a
    /// malformed event, an event past `OPENAI_MAX_EVENT_BYTES`, more tool calls than
    /// `MCP_MAX_TOOL_CALLS`.
    Unreadable(&'static str),
    /// The server sent an error object inside the stream.
    Provider,
    /// The body ended before `[DONE]` or a finish reason.
    Truncated,
}

impl StreamFailure {
    fn log(&self, message: &'static str) {
        match self {
            Self::Transport(e) => warn!(error = %error_chain(e), "{message}"),
            Self::Unreadable(cause) => warn!(cause, "{message}"),
            Self::Provider => warn!(cause = "error event", "{message}"),
            Self::Truncated => warn!(cause = "ended early", "{message}"),
        }
    }

    /// The error the caller sees when the stream fails after it has started.
    fn into_mid_stream_error(self) -> LlmError {
        self.log("LLM stream failed mid-reply");
        match self {
            Self::Transport(e) if e.is_timeout() => LlmError::Timeout,
            Self::Unreadable(_) => LlmError::BadResponse,
            Self::Transport(_) | Self::Provider | Self::Truncated => LlmError::Interrupted,
        }
    }
}

/// The body of a successful response, read as server-sent chat-completion chunks.
struct Reply {
    body: BodyBytes,
    /// Splits the body into events, within `OPENAI_MAX_EVENT_BYTES`.
    decoder: SseDecoder,
    /// Events parsed but not yet handed out (one chunk may carry text and usage).
    pending: VecDeque<LlmEvent>,
    /// A choice carried a finish reason, so an end without `[DONE]` is still complete.
    finished: bool,
    /// Tool calls being assembled from their streamed pieces.
    calls: ToolCalls,
    /// Nothing more will be read.
    done: bool,
    /// The server reported the usage.
    usage_seen: bool,
    /// Estimated tokens of the prompt, and characters of the answer (text and tool-call
    /// arguments) so far: the usage handed out when the server reports none.
    prompt_estimate: usize,
    answer_chars: usize,
}

impl Reply {
    fn new(response: reqwest::Response, bounds: ReplyBounds, prompt_estimate: usize) -> Self {
        // `chunk()` rather than `bytes_stream()`: same result without another reqwest feature.
        let body = futures::stream::try_unfold(response, |mut response| async move {
            Ok(response.chunk().await?.map(|chunk| (chunk, response)))
        });
        Self {
            body: body.boxed(),
            decoder: SseDecoder::new(bounds.max_event_bytes),
            pending: VecDeque::new(),
            finished: false,
            calls: ToolCalls::new(bounds.max_tool_calls, bounds.max_argument_chars),
            done: false,
            usage_seen: false,
            prompt_estimate,
            answer_chars: 0,
        }
    }

    /// Reads until there is an event to hand out or the reply is complete.
    async fn fill(&mut self) -> Result<(), StreamFailure> {
        while self.pending.is_empty() && !self.done {
            let read = match self.decoder.next_event() {
                Some(data) => self.handle(&data),
                None => self.read_body().await,
            };
            if let Err(failure) = read {
                self.done = true;
                return Err(failure);
            }
        }
        Ok(())
    }

    /// Reads the next bytes of the body into the decoder.
    async fn read_body(&mut self) -> Result<(), StreamFailure> {
        match self.body.next().await {
            None => {
                self.done = true;
                match self.finished {
                    true => {
                        self.estimate_usage();
                        Ok(())
                    }
                    false => Err(StreamFailure::Truncated),
                }
            }
            Some(Err(e)) => Err(StreamFailure::Transport(e.without_url())),
            // The events' content is not logged: it may quote the user's text.
            Some(Ok(bytes)) => self.decoder.feed(&bytes).map_err(|e| {
                StreamFailure::Unreadable(match e {
                    SseError::TooLarge => "event larger than OPENAI_MAX_EVENT_BYTES",
                    SseError::NotUtf8 => "event not UTF-8",
                })
            }),
        }
    }

    /// Turns one SSE `data` payload into events.
    fn handle(&mut self, data: &str) -> Result<(), StreamFailure> {
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            self.flush_calls();
            self.estimate_usage();
            return Ok(());
        }
        let chunk = match serde_json::from_str::<CreateChatCompletionStreamResponse>(data) {
            Ok(chunk) => chunk,
            Err(parse_error) => {
                if let Ok(wrapped) = serde_json::from_str::<WrappedError>(data) {
                    warn!(
                        error_type = wrapped.error.r#type.as_deref(),
                        error_code = wrapped.error.code.as_deref(),
                        "LLM sent an error inside the stream"
                    );
                    return Err(StreamFailure::Provider);
                }
                // serde_json's message names the field and position, not the content.
                warn!(error = %parse_error, "unreadable chunk in LLM stream");
                return Err(StreamFailure::Unreadable("malformed event"));
            }
        };
        // Only the first choice is used: requests never ask for `n > 1`.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                self.answer_chars += text.chars().count();
                self.pending.push_back(LlmEvent::Delta(text));
            }
            for piece in choice.delta.tool_calls.into_iter().flatten() {
                let arguments = piece.function.as_ref().and_then(|f| f.arguments.as_ref());
                self.answer_chars += arguments.map_or(0, |a| a.chars().count());
                match self.calls.add(piece) {
                    Ok(()) => {}
                    Err(Overflow::TooManyCalls) => {
                        return Err(StreamFailure::Unreadable(
                            "more tool calls than MCP_MAX_TOOL_CALLS",
                        ))
                    }
                    Err(Overflow::ArgumentsTooLong) => {
                        self.cut();
                        return Ok(());
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                debug!(?reason, "LLM finished");
                self.finished = true;
                self.flush_calls();
                if let Ok(serde_json::Value::String(name)) = serde_json::to_value(reason) {
                    self.pending.push_back(LlmEvent::Finished(name));
                }
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage_seen = true;
            self.pending.push_back(LlmEvent::Usage(Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                total_tokens: usage.total_tokens,
                estimated: false,
            }));
        }
        Ok(())
    }

    /// At the normal end of a reply whose server reported no usage (it ignores
    /// `stream_options.include_usage`), hands out an estimate, marked as one.
    fn estimate_usage(&mut self) {
        if !self.usage_seen {
            self.usage_seen = true;
            let mut usage = estimate_usage(&[], self.answer_chars);
            usage.prompt_tokens = u32::try_from(self.prompt_estimate).unwrap_or(u32::MAX);
            usage.total_tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            self.pending.push_back(LlmEvent::Usage(usage));
        }
    }

    /// Hands out the assembled tool calls, once.
    fn flush_calls(&mut self) {
        let calls = self.calls.take();
        if !calls.is_empty() {
            self.pending.push_back(LlmEvent::ToolCalls(calls));
        }
    }

    /// Ends the reply at a bound: the calls being assembled are dropped, what was said
    /// before is handed out, then `Truncated`; the body is dropped, which cancels the
    /// request, so the server stops generating (and billing) at once.
    fn cut(&mut self) {
        warn!("LLM tool-call arguments passed MCP_MAX_ARGUMENT_CHARS; the reply is cut");
        self.calls.take();
        self.pending.push_back(LlmEvent::Truncated);
        self.done = true;
        self.body = futures::stream::empty().boxed();
    }

    fn into_stream(self) -> LlmStream {
        futures::stream::unfold(self, |mut reply| async move {
            if reply.pending.is_empty() && !reply.done {
                if let Err(failure) = reply.fill().await {
                    return Some((Err(failure.into_mid_stream_error()), reply));
                }
            }
            let event = reply.pending.pop_front()?;
            Some((Ok(event), reply))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    reqwest::header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds_and_caps() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "0")])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "250"), ("retry-after", "9")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3600")])),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2015 07:28:00 GMT"
            )])),
            None
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")])), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for retry in 0..4 {
            let full = base * 2u32.pow(retry);
            let delay = backoff_delay(base, retry);
            assert!(delay >= full / 2 && delay <= full, "{retry}: {delay:?}");
        }
        assert!(backoff_delay(base, 40) <= MAX_BACKOFF);
        assert!(backoff_delay(Duration::from_secs(u64::MAX / 2), 3) <= MAX_BACKOFF);
    }

    #[test]
    fn content_type_check_accepts_event_streams_only() {
        assert!(is_event_stream(&headers(&[(
            "content-type",
            "text/event-stream; charset=utf-8"
        )])));
        assert!(is_event_stream(&HeaderMap::new()));
        assert!(!is_event_stream(&headers(&[(
            "content-type",
            "application/json"
        )])));
    }

    #[test]
    fn bad_settings_are_refused_at_build_time() {
        let mut settings = crate::config::Settings::default().llm;
        settings.base_url = "not a url".to_owned();
        assert!(matches!(
            OpenAiProvider::new(&settings),
            Err(ProviderBuildError::InvalidBaseUrl)
        ));
        settings.base_url = "http://localhost:1/v1".to_owned();
        settings.api_key = Some(crate::config::Secret::new("sk-bad\nkey"));
        assert!(matches!(
            OpenAiProvider::new(&settings),
            Err(ProviderBuildError::InvalidApiKey)
        ));
        settings.api_key = Some(crate::config::Secret::new("sk-good"));
        let provider = OpenAiProvider::new(&settings).unwrap();
        assert!(!format!("{provider:?}").contains("sk-good"));
    }
}
