//! A fake OpenAI-compatible server for tests: a real HTTP server on `127.0.0.1:0` that answers
//! `POST /v1/chat/completions` in the OpenAI wire format, as plain JSON or as server-sent
//! events, following a per-test script of [`Behaviour`]s, and records what it received.
//!
//! ```ignore
//! let fake = FakeLlm::start().await;
//! fake.script(Behaviour::rate_limited(0));        // first request: 429
//! fake.script(Behaviour::reply("Hello there"));   // second: a streamed reply
//! // point the service at it: OPENAI_BASE_URL = fake.base_url
//! assert_eq!(fake.request_count(), 2);
//! ```

// Each test module uses a different part of this helper.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
// Named here rather than through the harness: `examples/bench.rs` includes this file too.
use chat_service::config::{LlmProviderKind, LlmSettings, Secret};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// The API key that [`FakeLlm::llm_settings`] configures.
pub const FAKE_API_KEY: &str = "sk-fake-test-key-0123456789";

/// The model name the fake reports when a request names none.
pub const FAKE_MODEL: &str = "fake-model";

/// Text inside every error body the fake sends, so tests can check it never leaks.
pub const RAW_ERROR_MARKER: &str = "raw-provider-detail";

/// What the fake does with one request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answer the joined `pieces`, streamed one content chunk per piece (or at once for
    /// `stream: false`), waiting `delay` before each chunk.
    Reply {
        /// The reply, chunk by chunk.
        pieces: Vec<String>,
        /// Wait before each chunk.
        delay: Duration,
    },
    /// Answer an HTTP error with an OpenAI-style error body.
    Status {
        /// The status code.
        status: u16,
        /// `Retry-After` header value, when any.
        retry_after: Option<String>,
        /// The error object's `type` (and `code`).
        error_type: String,
    },
    /// Start a streamed reply, send the first `sent` pieces, then break the connection (no
    /// `[DONE]`, no clean end of the body).
    DropAfter {
        /// The reply that would have been sent, chunk by chunk.
        pieces: Vec<String>,
        /// How many chunks are sent before the connection breaks.
        sent: usize,
    },
    /// Accept the request and answer `pieces` like `Reply` once `release` is notified.
    Held {
        /// The reply, chunk by chunk.
        pieces: Vec<String>,
        /// Notified by the test to let the answer go.
        release: Arc<tokio::sync::Notify>,
    },
    /// Accept the request and never answer.
    Hang,
    /// Ask for tool calls: `(name, arguments JSON)` each, streamed as OpenAI's `tool_calls`
    /// deltas (the arguments in several pieces), finishing with `tool_calls`.
    ToolCalls {
        /// The calls.
        calls: Vec<(String, String)>,
    },
    /// Stream `piece` again and again, as fast as the client reads, until it goes away.
    Endless {
        /// One content chunk.
        piece: String,
    },
    /// Say `said`, then ask for one call whose arguments go on for `total` bytes, in 64 KiB
    /// pieces made as the client reads them (never held whole), then finish as `ToolCalls`.
    EndlessArguments {
        /// Text before the call; none when empty.
        said: String,
        /// Bytes of arguments in all.
        total: usize,
    },
    /// Say `said`, then ask for one call at each of these `tool_calls[].index` values.
    ToolCallsAt {
        /// Text before the calls; none when empty.
        said: String,
        /// The indexes, as sent (a hostile server may send any number).
        indexes: Vec<u64>,
    },
    /// Say `said`, then start an event whose line never ends: `piece` bytes at a time, no
    /// newline ever, as fast as the client reads, until it goes away.
    EndlessLine {
        /// Text before the line; none when empty.
        said: String,
        /// Bytes per write.
        piece: usize,
    },
}

impl Behaviour {
    /// Ask for one call of `name` with these arguments.
    pub fn tool_call(name: &str, arguments: Value) -> Self {
        Self::ToolCalls {
            calls: vec![(name.to_owned(), arguments.to_string())],
        }
    }

    /// Reply `text` in one chunk per word (each keeping its trailing whitespace).
    pub fn reply(text: &str) -> Self {
        Self::Reply {
            pieces: words(text),
            delay: Duration::ZERO,
        }
    }

    /// Reply `text` in one chunk per word, waiting `delay` before each chunk.
    pub fn reply_slowly(text: &str, delay: Duration) -> Self {
        Self::Reply {
            pieces: words(text),
            delay,
        }
    }

    /// 429 with `Retry-After: <seconds>`.
    pub fn rate_limited(retry_after_seconds: u64) -> Self {
        Self::Status {
            status: 429,
            retry_after: Some(retry_after_seconds.to_string()),
            error_type: "rate_limit_exceeded".to_owned(),
        }
    }

    /// 500 with no `Retry-After`.
    pub fn server_error() -> Self {
        Self::status(500)
    }

    /// Any status with an OpenAI-style error body and no `Retry-After`.
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            retry_after: None,
            error_type: "fake_error".to_owned(),
        }
    }

    /// Any status with the given error `type`/`code`, e.g. `insufficient_quota`.
    pub fn error(status: u16, error_type: &str) -> Self {
        Self::Status {
            status,
            retry_after: None,
            error_type: error_type.to_owned(),
        }
    }

    /// Stream the first `sent` words of `text` as chunks, then break the connection.
    pub fn drop_after(text: &str, sent: usize) -> Self {
        Self::DropAfter {
            pieces: words(text),
            sent,
        }
    }

    /// Never answer.
    pub fn hang() -> Self {
        Self::Hang
    }

    /// Reply `text` once the returned handle is notified (`notify_one`), not before.
    pub fn held(text: &str) -> (Self, Arc<tokio::sync::Notify>) {
        let release = Arc::new(tokio::sync::Notify::new());
        let behaviour = Self::Held {
            pieces: words(text),
            release: release.clone(),
        };
        (behaviour, release)
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The `Authorization` header, when sent.
    pub authorization: Option<String>,
    /// The JSON body (`Value::Null` when it was not JSON).
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Behaviour>>,
    fallback: Mutex<Option<Behaviour>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Requests are not recorded (a long benchmark would keep them all).
    forgetful: std::sync::atomic::AtomicBool,
    /// Streams never report usage, whatever `stream_options` asks (as some servers do).
    no_usage: std::sync::atomic::AtomicBool,
    /// Endless replies whose client went away.
    abandoned: tokio::sync::watch::Sender<usize>,
}

/// A running fake server; stopped when dropped.
pub struct FakeLlm {
    /// The value for `OPENAI_BASE_URL`, e.g. `http://127.0.0.1:4242/v1`.
    pub base_url: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeLlm {
    /// Starts a server on a free local port. With nothing scripted it answers every request
    /// with `Behaviour::reply("Hello from the fake LLM")`.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake LLM");
        let addr = listener.local_addr().expect("fake LLM address");
        // Chunks are small writes; without TCP_NODELAY they would wait for delayed ACKs.
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            let _ = stream.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake LLM server");
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            shared,
            server,
        }
    }

    /// Waits until `count` endless or hanging replies have been abandoned by their client.
    pub async fn abandoned(&self, count: usize) {
        let mut watch = self.shared.abandoned.subscribe();
        let waited =
            tokio::time::timeout(Duration::from_secs(30), watch.wait_for(|n| *n >= count)).await;
        assert!(waited.is_ok(), "the endless reply was never abandoned");
    }

    /// Queues `behaviour` for the next unscripted request.
    pub fn script(&self, behaviour: Behaviour) {
        lock(&self.shared.script).push_back(behaviour);
    }

    /// Queues `behaviour` for the next `times` requests.
    pub fn script_times(&self, times: usize, behaviour: Behaviour) {
        let mut script = lock(&self.shared.script);
        script.extend(std::iter::repeat_n(behaviour, times));
    }

    /// What every request gets once the script is used up (e.g. an error to fail always).
    pub fn set_fallback(&self, behaviour: Behaviour) {
        *lock(&self.shared.fallback) = Some(behaviour);
    }

    /// Stops recording requests, for a server that answers many.
    pub fn forget_requests(&self) {
        self.shared
            .forgetful
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops reporting usage in streams, like servers that ignore `include_usage`.
    pub fn without_usage(&self) {
        self.shared
            .no_usage
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// The most recent request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.requests).last().cloned()
    }

    /// LLM settings that point an `OpenAiProvider` at this server: key [`FAKE_API_KEY`],
    /// model [`FAKE_MODEL`], 2 retries 1 ms apart, a 5 s timeout.
    pub fn llm_settings(&self) -> LlmSettings {
        LlmSettings {
            provider: LlmProviderKind::OpenAi,
            base_url: self.base_url.clone(),
            api_key: Some(Secret::new(FAKE_API_KEY)),
            model: FAKE_MODEL.to_owned(),
            allowed_models: vec![FAKE_MODEL.to_owned()],
            temperature: 0.5,
            max_tokens: 256,
            timeout: Duration::from_secs(5),
            stream_idle: Duration::from_secs(5),
            max_reply: Duration::from_secs(60),
            max_reply_chars: 100_000,
            max_retries: 2,
            retry_base_delay: Duration::from_millis(1),
            context_token_budget: 1000,
            max_event_bytes: 1024 * 1024,
            max_tool_calls: 16,
            max_argument_chars: 100_000,
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !shared.forgetful.load(std::sync::atomic::Ordering::Relaxed) {
        lock(&shared.requests).push(RecordedRequest {
            authorization: headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: body.clone(),
        });
    }
    let behaviour = lock(&shared.script)
        .pop_front()
        .or_else(|| lock(&shared.fallback).clone())
        .unwrap_or_else(|| Behaviour::reply("Hello from the fake LLM"));

    let streaming = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false)
        && !shared.no_usage.load(std::sync::atomic::Ordering::Relaxed);
    let model = body["model"].as_str().unwrap_or(FAKE_MODEL).to_owned();
    let prompt_tokens = prompt_tokens(&body);

    match behaviour {
        Behaviour::Hang => {
            // Dropped, and counted as abandoned, when the client gives up the request.
            let _abandoned = Abandoned(shared.clone());
            std::future::pending().await
        }
        Behaviour::Held { pieces, release } => {
            release.notified().await;
            let usage = usage(prompt_tokens, pieces.len());
            reply(
                model,
                pieces,
                Duration::ZERO,
                usage,
                streaming,
                include_usage,
            )
        }
        Behaviour::Endless { piece } => endless(model, piece, shared),
        Behaviour::EndlessArguments { said, total } => {
            endless_arguments(&model, &said, total, shared)
        }
        Behaviour::ToolCallsAt { said, indexes } => tool_calls_at(&model, &said, &indexes),
        Behaviour::EndlessLine { said, piece } => endless_line(&model, &said, piece, shared),
        Behaviour::ToolCalls { calls } => tool_calls(&model, &calls, include_usage),
        Behaviour::Status {
            status,
            retry_after,
            error_type,
        } => error_response(status, retry_after, &error_type),
        Behaviour::Reply { pieces, delay } => {
            let usage = usage(prompt_tokens, pieces.len());
            reply(model, pieces, delay, usage, streaming, include_usage)
        }
        Behaviour::DropAfter { pieces, sent } => {
            let usage = usage(prompt_tokens, pieces.len());
            let reply = StreamedReply {
                model,
                pieces,
                delay: Duration::ZERO,
                usage: include_usage.then_some(usage),
                break_after: Some(sent),
            };
            reply.into_response()
        }
    }
}

/// A reply of `pieces`: streamed with a `delay` before each chunk (with `usage` when the
/// request asked for it), or at once as one completion with its `usage`.
fn reply(
    model: String,
    pieces: Vec<String>,
    delay: Duration,
    usage: Value,
    streaming: bool,
    include_usage: bool,
) -> Response {
    if !streaming {
        return Json(completion(&model, &pieces.concat(), usage)).into_response();
    }
    let reply = StreamedReply {
        model,
        pieces,
        delay,
        usage: include_usage.then_some(usage),
        break_after: None,
    };
    reply.into_response()
}

fn error_response(status: u16, retry_after: Option<String>, error_type: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "error": {
            "message": format!("{RAW_ERROR_MARKER}: fake failure {status}, key {FAKE_API_KEY}"),
            "type": error_type,
            "param": null,
            "code": error_type,
        }
    });
    let mut response = (status, Json(body)).into_response();
    if let Some(value) = retry_after.and_then(|v| v.parse().ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// A deterministic stand-in for prompt tokens: the number of words in all messages.
pub fn prompt_tokens(body: &Value) -> usize {
    body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["content"].as_str())
                .map(|c| c.split_whitespace().count())
                .sum()
        })
        .unwrap_or(0)
}

/// Usage the fake reports: prompt tokens as above, one completion token per chunk.
fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Word-sized pieces of `text` that join back to it exactly.
fn words(text: &str) -> Vec<String> {
    text.split_inclusive(char::is_whitespace)
        .map(str::to_owned)
        .collect()
}

fn completion(model: &str, text: &str, usage: Value) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": usage,
    })
}

fn chunk(model: &str, delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "usage": null,
    })
}

/// A streamed reply in OpenAI's order: a role chunk, content chunks, a finish chunk, a usage
/// chunk (when asked for), then `[DONE]`.
struct StreamedReply {
    model: String,
    pieces: Vec<String>,
    delay: Duration,
    usage: Option<Value>,
    /// Break the connection after this many content chunks.
    break_after: Option<usize>,
}

impl IntoResponse for StreamedReply {
    fn into_response(self) -> Response {
        let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(16);
        tokio::spawn(async move {
            let event = |value: Value| Ok(sse_event(value));
            let role = json!({"role": "assistant", "content": ""});
            if tx
                .send(event(chunk(&self.model, role, None)))
                .await
                .is_err()
            {
                return;
            }
            for (i, piece) in self.pieces.iter().enumerate() {
                if self.break_after == Some(i) {
                    break_connection(&tx).await;
                    return;
                }
                if !self.delay.is_zero() {
                    tokio::time::sleep(self.delay).await;
                }
                let delta = json!({"content": piece});
                if tx
                    .send(event(chunk(&self.model, delta, None)))
                    .await
                    .is_err()
                {
                    // The client went away: stop generating, as a real server would.
                    return;
                }
            }
            if self.break_after.is_some() {
                break_connection(&tx).await;
                return;
            }
            let _ = tx
                .send(event(chunk(&self.model, json!({}), Some("stop"))))
                .await;
            if let Some(usage) = self.usage {
                let mut last = chunk(&self.model, json!({}), None);
                last["choices"] = json!([]);
                last["usage"] = usage;
                let _ = tx.send(event(last)).await;
            }
            let _ = tx.send(Ok("data: [DONE]\n\n".to_owned())).await;
        });
        (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(ReceiverStream::new(rx)),
        )
            .into_response()
    }
}

/// A streamed answer that asks for tool calls, in OpenAI's shape: the id and name first, the
/// arguments in pieces, then `finish_reason: tool_calls`, usage, `[DONE]`.
fn tool_calls(model: &str, calls: &[(String, String)], include_usage: bool) -> Response {
    let mut events = opening(model, "");
    for (index, (name, arguments)) in calls.iter().enumerate() {
        let head = json!({"tool_calls": [{"index": index, "id": format!("call_{index}"),
            "type": "function", "function": {"name": name, "arguments": ""}}]});
        events.push(sse_event(chunk(model, head, None)));
        let middle = arguments.len() / 2;
        for piece in [&arguments[..middle], &arguments[middle..]] {
            let delta = json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]});
            events.push(sse_event(chunk(model, delta, None)));
        }
    }
    events.extend(tool_calls_end(model, include_usage.then(|| usage(3, 5))));
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        events.concat(),
    )
        .into_response()
}

/// Counts a request as abandoned by its client when dropped.
struct Abandoned(Arc<Shared>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.abandoned.send_modify(|n| *n += 1);
    }
}

/// A reply that never ends: the same chunk until the client stops reading it.
fn endless(model: String, piece: String, shared: Arc<Shared>) -> Response {
    let data = sse_event(chunk(&model, json!({"content": piece}), None));
    lazy_stream(Vec::new(), move || Some(data.clone()), shared)
}

/// The events that open a misbehaving reply: the role, and `said` when there is any.
fn opening(model: &str, said: &str) -> Vec<String> {
    let mut events = vec![sse_event(chunk(
        model,
        json!({"role": "assistant", "content": null}),
        None,
    ))];
    if !said.is_empty() {
        events.push(sse_event(chunk(model, json!({"content": said}), None)));
    }
    events
}

/// The end of a reply that asked for tool calls: the finish reason, the usage when given,
/// `[DONE]`.
fn tool_calls_end(model: &str, usage: Option<Value>) -> Vec<String> {
    let mut events = vec![sse_event(chunk(model, json!({}), Some("tool_calls")))];
    if let Some(usage) = usage {
        let mut last = chunk(model, json!({}), None);
        last["choices"] = json!([]);
        last["usage"] = usage;
        events.push(sse_event(last));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// One call of `lookup` whose arguments are `total` bytes long, made piece by piece as the
/// client reads, so a test can send hundreds of megabytes without holding them.
fn endless_arguments(model: &str, said: &str, total: usize, shared: Arc<Shared>) -> Response {
    const PIECE: usize = 64 * 1024;
    let mut head = opening(model, said);
    let call = json!({"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
        "function": {"name": "lookup", "arguments": ""}}]});
    head.push(sse_event(chunk(model, call, None)));
    let piece = json!({"tool_calls": [{"index": 0, "function": {"arguments": "x".repeat(PIECE)}}]});
    let piece = sse_event(chunk(model, piece, None));
    let mut end = tool_calls_end(model, None);
    let mut left = total;
    lazy_stream(
        head,
        move || match left {
            0 => (!end.is_empty()).then(|| end.remove(0)),
            _ => {
                left = left.saturating_sub(PIECE);
                Some(piece.clone())
            }
        },
        shared,
    )
}

/// Calls of `lookup` at the given indexes, one chunk each.
fn tool_calls_at(model: &str, said: &str, indexes: &[u64]) -> Response {
    let mut events = opening(model, said);
    for index in indexes {
        let call = json!({"tool_calls": [{"index": index, "id": format!("call_{index}"),
            "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]});
        events.push(sse_event(chunk(model, call, None)));
    }
    events.extend(tool_calls_end(model, None));
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        events.concat(),
    )
        .into_response()
}

/// An event whose `data:` line never ends: `piece` bytes after another, without a newline.
fn endless_line(model: &str, said: &str, piece: usize, shared: Arc<Shared>) -> Response {
    let mut head = opening(model, said);
    head.push("data: {\"id\":\"".to_owned());
    let piece = "x".repeat(piece);
    lazy_stream(head, move || Some(piece.clone()), shared)
}

/// A body of `head`, then of what `next` makes, each made only when the client has read the
/// one before; counted as abandoned when the client goes away before `next` runs out.
fn lazy_stream(
    head: Vec<String>,
    mut next: impl FnMut() -> Option<String> + Send + 'static,
    shared: Arc<Shared>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut body = head
            .into_iter()
            .map(Some)
            .chain(std::iter::from_fn(|| Some(next())));
        while let Some(Some(data)) = body.next() {
            if tx.send(Ok(data)).await.is_err() {
                shared.abandoned.send_modify(|n| *n += 1);
                return;
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

/// One server-sent event carrying `value`.
fn sse_event(value: Value) -> String {
    format!("data: {value}\n\n")
}

/// Makes the server abort the connection mid-body, after what was sent has reached the client.
async fn break_connection(tx: &mpsc::Sender<Result<String, std::io::Error>>) {
    // The server discards frames still in its write buffer when the body fails; a pause lets
    // it find the channel empty and flush them first, as a real network would have delivered.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = tx
        .send(Err(std::io::Error::other("connection dropped")))
        .await;
}
