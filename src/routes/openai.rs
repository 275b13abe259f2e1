//! `/v1/models` and `/v1/chat/completions`: OpenAI's API, in its wire format, for the tools
//! that speak it (the official SDKs, LangChain, editors' assistants, curl). A caller
//! authenticates with a personal API key (or a JWT); each call is kept as an exchange in a
//! conversation of theirs (`service::completions`). Errors are OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` with OpenAI's statuses.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use async_openai::types::{
    ChatCompletionRequestAssistantMessageContent, ChatCompletionRequestAssistantMessageContentPart,
    ChatCompletionRequestDeveloperMessageContent, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestSystemMessageContentPart,
    ChatCompletionRequestToolMessageContent, ChatCompletionRequestToolMessageContentPart,
    ChatCompletionRequestUserMessageContent, ChatCompletionRequestUserMessageContentPart,
    ChatCompletionToolChoiceOption, CreateChatCompletionRequest, Stop,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AuthUser;
use crate::chat::events::{Exchange, Failure, LiveEvent};
use crate::chat::llm::{
    ChatRole, ChatTurn, CompletionOptions, CompletionRequest, Purpose, ToolCall, ToolChoice,
    ToolSpec,
};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::openapi::{OpenAiAuthErrors, OpenAiBodyErrors};
use crate::service::completions::{self, CompletionCall};
use crate::service::reply::{Lagged, ReplyStream};
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(get_model))
        .routes(routes!(chat_completions))
}

/// The response header that names the conversation keeping the call.
pub const CONVERSATION_HEADER: &str = "x-conversation-id";

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<&'static str>,
    /// The conversation that keeps what the call stored, when it got that far.
    conversation: Option<String>,
    /// Seconds until a call refused by a usage limit would be admitted (`Retry-After`).
    retry_after: Option<u64>,
}

/// The body of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    /// The error.
    pub error: OpenAiErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    /// A human message.
    pub message: String,
    /// OpenAI's error type: `invalid_request_error`, `requests` (429), `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A stable code, e.g. `invalid_api_key`, `model_not_found`, `rate_limit_exceeded`.
    pub code: Option<String>,
}

impl OpenAiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let (kind, code) = match status.as_u16() {
            401 => ("invalid_request_error", Some("invalid_api_key")),
            403 => ("invalid_request_error", Some("permission_denied")),
            404 => ("invalid_request_error", Some("not_found")),
            409 => ("invalid_request_error", Some("conflict")),
            413 => ("invalid_request_error", Some("request_too_large")),
            429 => ("requests", Some("rate_limit_exceeded")),
            500..=599 => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        Self {
            status,
            message: message.into(),
            kind,
            code,
            param: None,
            conversation: None,
            retry_after: None,
        }
    }

    /// A 400 about the field `param`.
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::new(StatusCode::BAD_REQUEST, message)
        }
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
            .with_code("model_not_found")
        }
    }

    fn in_conversation(mut self, conversation: &str) -> Self {
        self.conversation = Some(conversation.to_owned());
        self
    }

    /// The error that ended a reply.
    fn of_failure(failure: Failure, error: &str) -> Self {
        let status = match failure {
            Failure::Llm => StatusCode::BAD_GATEWAY,
            Failure::NotFound => StatusCode::NOT_FOUND,
            Failure::Ended => StatusCode::CONFLICT,
            Failure::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Failure::Interrupted => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, error)
    }

    fn body(&self) -> OpenAiErrorBody {
        OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_owned(),
                param: self.param.map(str::to_owned),
                code: self.code.map(str::to_owned),
            },
        }
    }
}

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        // OpenAI answers 400 where the REST API answers 422.
        let status = match err.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            status => status,
        };
        let message = match &err {
            ApiError::Internal(detail) => {
                tracing::error!(error = ?detail, "internal error");
                "Internal server error".to_owned()
            }
            other => other.to_string(),
        };
        Self::new(status, message)
    }
}

impl From<crate::service::ServiceError> for OpenAiError {
    fn from(err: crate::service::ServiceError) -> Self {
        match err {
            // OpenAI's 429 with the limit as its code, and when to try again.
            crate::service::ServiceError::Limited(refusal) => Self {
                retry_after: Some(refusal.retry_after_secs()),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, refusal.detail())
                    .with_code(refusal.limit.as_str())
            },
            err => ApiError::from(err).into(),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(value) = self
            .conversation
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            headers.insert(CONVERSATION_HEADER, value);
        }
        response
    }
}

type OpenAiResult<T> = Result<T, OpenAiError>;

/// A model, in OpenAI's list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelOut {
    /// The model's name, as `model` takes it.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix time; 0, as the service does not know when the model was made.
    pub created: i64,
    /// Who offers it: `chat-service`.
    pub owned_by: String,
}

/// The models on offer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models: `OPENAI_MODEL` and `OPENAI_ALLOWED_MODELS`.
    pub data: Vec<ModelOut>,
}

fn model_out(id: &str) -> ModelOut {
    ModelOut {
        id: id.to_owned(),
        object: "model".to_owned(),
        created: 0,
        owned_by: "chat-service".to_owned(),
    }
}

/// The models this deployment offers (`OPENAI_MODEL` and `OPENAI_ALLOWED_MODELS`).
#[utoipa::path(get, path = "/v1/models", tag = "openai", security(("bearer" = [])),
    responses((status = 200, body = ModelList), OpenAiAuthErrors))]
async fn list_models(
    State(state): State<AppState>,
    caller: Result<AuthUser, ApiError>,
) -> OpenAiResult<Json<ModelList>> {
    caller?;
    let data = state
        .settings
        .llm
        .allowed_models
        .iter()
        .map(|m| model_out(m))
        .collect();
    Ok(Json(ModelList {
        object: "list".to_owned(),
        data,
    }))
}

/// One model on offer; 404 `model_not_found` for any other.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai", security(("bearer" = [])),
    params(("model" = String, Path)),
    responses((status = 200, body = ModelOut), (status = 404, body = OpenAiErrorBody),
        OpenAiAuthErrors))]
async fn get_model(
    State(state): State<AppState>,
    caller: Result<AuthUser, ApiError>,
    model: Result<ApiPath<String>, ApiError>,
) -> OpenAiResult<Json<ModelOut>> {
    caller?;
    let ApiPath(model) = model?;
    if !state.settings.llm.allowed_models.contains(&model) {
        return Err(OpenAiError::model_not_found(&model));
    }
    Ok(Json(model_out(&model)))
}

/// A chat completion request, as OpenAI documents it (the fields the service reads; others
/// are accepted and ignored).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ChatCompletionBody {
    /// One of the models `/v1/models` lists.
    model: String,
    /// The whole context: `system` (or `developer`), `user`, `assistant` (with `tool_calls`)
    /// and `tool` messages; `content` is text or an array of `{"type": "text", "text"}`
    /// parts. At least one `user` message.
    #[schema(min_items = 1, value_type = Vec<Object>)]
    messages: Vec<Value>,
    /// Stream `chat.completion.chunk` events, then `data: [DONE]`.
    stream: Option<bool>,
    /// `{"include_usage": true}`: a last chunk with the usage and no choices.
    #[schema(value_type = Option<Object>)]
    stream_options: Option<Value>,
    /// Sampling temperature.
    temperature: Option<f32>,
    /// Nucleus sampling.
    top_p: Option<f32>,
    /// Longest reply in tokens (deprecated by OpenAI for `max_completion_tokens`).
    max_tokens: Option<u32>,
    /// Longest reply in tokens.
    max_completion_tokens: Option<u32>,
    /// Up to 4 sequences that end the reply: a string or an array.
    #[schema(value_type = Option<Object>)]
    stop: Option<Value>,
    /// The client's functions: `[{"type": "function", "function": {"name", "description",
    /// "parameters"}}]`. Calls come back as `tool_calls`, for the client to make.
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Vec<Value>>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name"}}`.
    #[schema(value_type = Option<Object>)]
    tool_choice: Option<Value>,
    /// The end user, passed to the provider.
    user: Option<String>,
    /// `{"conversation_id": "<public ID>"}` keeps the call in that conversation of the
    /// caller's (404 for any other); without it the call starts a new one.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

/// What a call answers: a `chat.completion` object, or with `stream` a
/// `text/event-stream` of `chat.completion.chunk` objects ending with `data: [DONE]`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ChatCompletionOut {
    /// `chatcmpl-...`.
    id: String,
    /// `chat.completion`.
    object: String,
    /// Unix time.
    created: i64,
    /// The model asked.
    model: String,
    /// One choice: `{"index": 0, "message": {"role": "assistant", "content", "tool_calls"?},
    /// "finish_reason"}`.
    #[schema(value_type = Vec<Object>)]
    choices: Vec<Value>,
    /// `prompt_tokens`, `completion_tokens`, `total_tokens`.
    #[schema(value_type = Object)]
    usage: Value,
}

/// Create a chat completion, OpenAI-compatible. The call is kept as an exchange (its last user
/// message and the reply, tool calls in the reply's metadata) in the conversation
/// `metadata.conversation_id` names, or in a new one titled from the first user message; the
/// `X-Conversation-Id` header names it. A client that leaves mid-stream does not stop the
/// reply: it is stored whole (or marked incomplete if the provider failed).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", security(("bearer" = [])),
    request_body = ChatCompletionBody,
    responses(
        (status = 200, description = "The completion, or its chunks as server-sent events",
            headers(("x-conversation-id" = String, description = "The conversation keeping the call")),
            content((ChatCompletionOut = "application/json"), (String = "text/event-stream"))),
        (status = 404, body = OpenAiErrorBody, description = "`model_not_found`, or a conversation that is not the caller's"),
        (status = 409, body = OpenAiErrorBody, description = "The conversation is ended or has a reply in progress"),
        (status = 429, body = OpenAiErrorBody, description = "Too many replies at once (`MAX_GENERATIONS_PER_USER`), or a usage limit refused the call (`code`: `messages_per_minute`, `tokens_per_day` or `tokens_per_month`, with `Retry-After` in seconds); nothing was stored"),
        (status = 502, body = OpenAiErrorBody, description = "The LLM provider failed"),
        (status = 503, body = OpenAiErrorBody, description = "The service is stopping"),
        OpenAiAuthErrors, OpenAiBodyErrors))]
async fn chat_completions(
    State(state): State<AppState>,
    caller: Result<AuthUser, ApiError>,
    body: Result<Bytes, BytesRejection>,
) -> OpenAiResult<Response> {
    let caller = caller?;
    let body = body.map_err(body_rejection)?;
    let request: CreateChatCompletionRequest = serde_json::from_slice(&body).map_err(|e| {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid request body: {e}"),
        )
    })?;
    let stream = request.stream.unwrap_or(false);
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let call = read_call(&state, &caller, request)?;
    let render = Render {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: chrono::Utc::now().timestamp(),
        model: call.prompt.model.clone(),
        include_usage,
    };
    let started = completions::start(&state, call).await?;
    let conversation = state.ids.conversation.encode(started.conversation);
    let mut events = started.events;
    // Nothing is answered before the reply's first text (or its end): a reply that fails
    // before it answers with an error status, as OpenAI's does.
    let first = loop {
        match events.next().await {
            Some(Ok(LiveEvent::ReplyDone { exchange, .. })) if !stream => {
                let body = completion(&render, &exchange);
                return Ok(with_conversation(Json(body).into_response(), &conversation));
            }
            Some(Ok(LiveEvent::ReplyFailed { failure, error, .. })) => {
                return Err(OpenAiError::of_failure(failure, &error).in_conversation(&conversation));
            }
            Some(Ok(event @ (LiveEvent::ReplyChunk { .. } | LiveEvent::ReplyDone { .. })))
                if stream =>
            {
                break Ok(event);
            }
            Some(Err(Lagged)) if stream => break Err(Lagged),
            Some(_) => {}
            None => {
                return Err(OpenAiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error",
                )
                .in_conversation(&conversation))
            }
        }
    };
    let mut chunks = Chunks {
        events,
        pending: VecDeque::new(),
        sent_chars: 0,
        lagged: false,
        done: false,
        render,
    };
    chunks.start();
    chunks.handle(first);
    let events = futures::stream::unfold(chunks, |mut chunks| async move {
        loop {
            if let Some(event) = chunks.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), chunks));
            }
            if chunks.done {
                return None;
            }
            match chunks.events.next().await {
                Some(item) => chunks.handle(item),
                None => chunks.fail(&OpenAiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error",
                )),
            }
        }
    });
    let response = Sse::new(events.boxed())
        .keep_alive(KeepAlive::default())
        .into_response();
    Ok(with_conversation(response, &conversation))
}

fn with_conversation(mut response: Response, conversation: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(conversation) {
        response.headers_mut().insert(CONVERSATION_HEADER, value);
    }
    response
}

fn body_rejection(rejection: BytesRejection) -> OpenAiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            OpenAiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large")
        }
        StatusCode::REQUEST_TIMEOUT => OpenAiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "The request body did not arrive in time",
        ),
        status => OpenAiError::new(
            StatusCode::BAD_REQUEST,
            format!("Could not read the request body ({status})"),
        ),
    }
}

/// What a completion is rendered with.
struct Render {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
}

/// Reads a request into a call: the prompt as given, the messages to keep, the conversation.
fn read_call(
    state: &AppState,
    caller: &AuthUser,
    request: CreateChatCompletionRequest,
) -> OpenAiResult<CompletionCall> {
    let owner = caller.user.id;
    if !state.settings.llm.allowed_models.contains(&request.model) {
        return Err(OpenAiError::model_not_found(&request.model));
    }
    if request.messages.is_empty() {
        return Err(OpenAiError::invalid(
            "messages",
            "messages: must not be empty",
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(OpenAiError::invalid("n", "n: only 1 is supported"));
    }
    let conversation = match &request.metadata {
        None | Some(Value::Null) => None,
        Some(Value::Object(metadata)) => match metadata.get("conversation_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(super::conversation_key(state, id)?),
            Some(_) => {
                return Err(OpenAiError::invalid(
                    "metadata",
                    "metadata.conversation_id: must be a string",
                ))
            }
        },
        Some(_) => {
            return Err(OpenAiError::invalid(
                "metadata",
                "metadata: must be an object",
            ))
        }
    };
    let mut messages = Vec::with_capacity(request.messages.len());
    for (index, message) in request.messages.into_iter().enumerate() {
        messages.push(turn(index, message)?);
    }
    let first_of = |role: ChatRole| {
        messages
            .iter()
            .find(|t| t.role == role)
            .map(|t| t.content.clone())
    };
    let system_message = first_of(ChatRole::System);
    let first_question = first_of(ChatRole::User)
        .ok_or_else(|| OpenAiError::invalid("messages", "messages: must contain a user message"))?;
    let question = messages
        .iter()
        .rev()
        .find(|t| t.role == ChatRole::User)
        .map(|t| t.content.clone())
        .unwrap_or_default();
    // PostgreSQL cannot keep a NUL character in text.
    if [&question, &first_question]
        .into_iter()
        .chain(system_message.as_ref())
        .any(|text| text.contains('\0'))
    {
        return Err(OpenAiError::invalid(
            "messages",
            "messages: text must not contain NUL characters",
        ));
    }
    #[allow(deprecated)]
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    let tools = request
        .tools
        .unwrap_or_default()
        .into_iter()
        .map(|tool| ToolSpec {
            name: tool.function.name,
            description: tool.function.description,
            parameters: tool
                .function
                .parameters
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        })
        .collect();
    let options = CompletionOptions {
        temperature: request.temperature,
        top_p: request.top_p,
        stop: match request.stop {
            None => Vec::new(),
            Some(Stop::String(one)) => vec![one],
            Some(Stop::StringArray(many)) => many,
        },
        tool_choice: request.tool_choice.map(|choice| match choice {
            ChatCompletionToolChoiceOption::None => ToolChoice::None,
            ChatCompletionToolChoiceOption::Auto => ToolChoice::Auto,
            ChatCompletionToolChoiceOption::Required => ToolChoice::Required,
            ChatCompletionToolChoiceOption::Named(named) => {
                ToolChoice::Function(named.function.name)
            }
        }),
        user: request.user,
    };
    Ok(CompletionCall {
        owner,
        role: caller.role(),
        conversation,
        prompt: CompletionRequest {
            model: request.model,
            messages,
            tools,
            max_tokens,
            purpose: Purpose::Reply,
            options,
        },
        question,
        system_message,
        first_question,
    })
}

/// One message of the request as a turn of the prompt.
fn turn(index: usize, message: ChatCompletionRequestMessage) -> OpenAiResult<ChatTurn> {
    let only_text = || {
        OpenAiError::invalid(
            "messages",
            format!("messages[{index}].content: only text parts are supported"),
        )
    };
    let joined = |parts: Vec<String>| parts.join("\n");
    Ok(match message {
        ChatCompletionRequestMessage::Developer(m) => ChatTurn::new(
            ChatRole::System,
            match m.content {
                ChatCompletionRequestDeveloperMessageContent::Text(text) => text,
                ChatCompletionRequestDeveloperMessageContent::Array(parts) => {
                    joined(parts.into_iter().map(|p| p.text).collect())
                }
            },
        ),
        ChatCompletionRequestMessage::System(m) => ChatTurn::new(
            ChatRole::System,
            match m.content {
                ChatCompletionRequestSystemMessageContent::Text(text) => text,
                ChatCompletionRequestSystemMessageContent::Array(parts) => joined(
                    parts
                        .into_iter()
                        .map(|ChatCompletionRequestSystemMessageContentPart::Text(p)| p.text)
                        .collect(),
                ),
            },
        ),
        ChatCompletionRequestMessage::User(m) => ChatTurn::new(
            ChatRole::User,
            match m.content {
                ChatCompletionRequestUserMessageContent::Text(text) => text,
                ChatCompletionRequestUserMessageContent::Array(parts) => joined(
                    parts
                        .into_iter()
                        .map(|part| match part {
                            ChatCompletionRequestUserMessageContentPart::Text(p) => Ok(p.text),
                            _ => Err(only_text()),
                        })
                        .collect::<OpenAiResult<_>>()?,
                ),
            },
        ),
        ChatCompletionRequestMessage::Assistant(m) => {
            let content = match m.content {
                None => String::new(),
                Some(ChatCompletionRequestAssistantMessageContent::Text(text)) => text,
                Some(ChatCompletionRequestAssistantMessageContent::Array(parts)) => joined(
                    parts
                        .into_iter()
                        .filter_map(|part| match part {
                            ChatCompletionRequestAssistantMessageContentPart::Text(p) => {
                                Some(p.text)
                            }
                            ChatCompletionRequestAssistantMessageContentPart::Refusal(_) => None,
                        })
                        .collect(),
                ),
            };
            let calls: Vec<ToolCall> = m
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|call| ToolCall {
                    id: call.id,
                    name: call.function.name,
                    arguments: call.function.arguments,
                })
                .collect();
            ChatTurn::tool_request(content, calls)
        }
        ChatCompletionRequestMessage::Tool(m) => ChatTurn::tool_result(
            m.tool_call_id,
            match m.content {
                ChatCompletionRequestToolMessageContent::Text(text) => text,
                ChatCompletionRequestToolMessageContent::Array(parts) => joined(
                    parts
                        .into_iter()
                        .map(|ChatCompletionRequestToolMessageContentPart::Text(p)| p.text)
                        .collect(),
                ),
            },
        ),
        ChatCompletionRequestMessage::Function(_) => {
            return Err(OpenAiError::invalid(
                "messages",
                format!("messages[{index}].role: `function` is not supported; use `tool`"),
            ))
        }
    })
}

/// The tool calls a stored reply carries (OpenAI's wire form), if any.
fn tool_calls(exchange: &Exchange) -> Vec<Value> {
    exchange
        .ai_message
        .message_metadata
        .as_ref()
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn finish_reason(exchange: &Exchange, calls: &[Value]) -> String {
    if !calls.is_empty() {
        return "tool_calls".to_owned();
    }
    if exchange.truncated {
        return "length".to_owned();
    }
    exchange
        .ai_message
        .message_metadata
        .as_ref()
        .and_then(|m| m.get("finish_reason"))
        .and_then(Value::as_str)
        .unwrap_or("stop")
        .to_owned()
}

fn usage(exchange: &Exchange) -> Value {
    let message = &exchange.ai_message;
    let count = |name: &str| {
        message
            .message_metadata
            .as_ref()
            .and_then(|m| m.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (prompt, completion) = (count("prompt_tokens"), count("completion_tokens"));
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// A whole `chat.completion`.
fn completion(render: &Render, exchange: &Exchange) -> Value {
    let calls = tool_calls(exchange);
    let text = &exchange.ai_message.content;
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls.clone());
    }
    json!({
        "id": render.id,
        "object": "chat.completion",
        "created": render.created,
        "model": render.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(exchange, &calls),
        }],
        "usage": usage(exchange),
        "system_fingerprint": null,
    })
}

/// The chunks of a streamed completion, rendered from the reply's events.
struct Chunks {
    events: ReplyStream,
    pending: VecDeque<Event>,
    /// Characters of the reply sent so far.
    sent_chars: usize,
    /// Chunks were missed: the rest of the text goes with the end.
    lagged: bool,
    done: bool,
    render: Render,
}

impl Chunks {
    /// A `chat.completion.chunk` with these choices.
    fn envelope(&self, choices: Value) -> Value {
        json!({
            "id": self.render.id,
            "object": "chat.completion.chunk",
            "created": self.render.created,
            "model": self.render.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    fn push(&mut self, chunk: &Value) {
        self.pending
            .push_back(Event::default().data(chunk.to_string()));
    }

    fn chunk(&mut self, delta: Value, finish_reason: Option<&str>) {
        let mut chunk = self.envelope(json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        }]));
        if self.render.include_usage {
            chunk["usage"] = Value::Null;
        }
        self.push(&chunk);
    }

    /// The first chunk: the role, as OpenAI sends it.
    fn start(&mut self) {
        self.chunk(json!({"role": "assistant", "content": ""}), None);
    }

    fn handle(&mut self, item: Result<LiveEvent, Lagged>) {
        match item {
            Err(Lagged) => self.lagged = true,
            Ok(LiveEvent::ReplyChunk { delta, .. }) if !self.lagged => {
                self.sent_chars += delta.chars().count();
                self.chunk(json!({"content": &*delta}), None);
            }
            Ok(LiveEvent::ReplyDone { exchange, .. }) => self.end(&exchange),
            Ok(LiveEvent::ReplyFailed { failure, error, .. }) => {
                self.fail(&OpenAiError::of_failure(failure, &error));
            }
            Ok(_) => {}
        }
    }

    fn end(&mut self, exchange: &Arc<Exchange>) {
        let rest: String = exchange
            .ai_message
            .content
            .chars()
            .skip(self.sent_chars)
            .collect();
        if !rest.is_empty() {
            self.chunk(json!({ "content": rest }), None);
        }
        let calls = tool_calls(exchange);
        if !calls.is_empty() {
            let indexed: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(index, call)| {
                    let mut call = call.clone();
                    call["index"] = json!(index);
                    call
                })
                .collect();
            self.chunk(json!({ "tool_calls": indexed }), None);
        }
        let reason = finish_reason(exchange, &calls);
        self.chunk(json!({}), Some(&reason));
        if self.render.include_usage {
            let mut chunk = self.envelope(json!([]));
            chunk["usage"] = usage(exchange);
            self.push(&chunk);
        }
        self.pending.push_back(Event::default().data("[DONE]"));
        self.done = true;
    }

    /// Ends the stream with an error event, as OpenAI does mid-stream.
    fn fail(&mut self, error: &OpenAiError) {
        let body = serde_json::to_string(&error.body()).unwrap_or_default();
        self.pending.push_back(Event::default().data(body));
        self.done = true;
    }
}
