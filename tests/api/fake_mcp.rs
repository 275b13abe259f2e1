//! Fake MCP servers: real HTTP servers on `127.0.0.1:0` that record every request.
//!
//! - [`FakeMcp::start_rmcp`]: rmcp's own server over Streamable HTTP (sessions, SSE answers).
//!   Tools: `get_current_time {timezone}`, `echo {text}`, `repeat {text, times}`, `fail` (the
//!   tool reports an error), `reject` (a JSON-RPC error) and `slow` (never answers).
//! - [`FakeMcp::start_plain_json`]: a small JSON-RPC-over-POST server like the platform's
//!   timezone server: protocol 2024-11-05, no session id, a plain `application/json` answer to
//!   every POST (`{}` to `notifications/initialized`), its tools listed over two pages:
//!   `get_current_time {timezone}`, which declares an `outputSchema` but returns only
//!   `content`, and `structured_only`, which has no `inputSchema` and returns only
//!   `structuredContent`.
//! - [`FakeMcp::start_flooding`]: the plain server with one tool, `flood`, that answers one
//!   method (`initialize`, `tools/list` or `tools/call`) with a flood ([`Flood`]): a JSON
//!   body or one SSE event that goes on for a given size, or SSE events that never end. The
//!   flood is made as the client reads it, never held whole.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header::CONTENT_TYPE, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{CallToolResult, ContentBlock, ErrorData, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::PATIENCE;

/// The path both servers answer on.
const MCP_PATH: &str = "/mcp";

/// One HTTP request a fake server received.
#[derive(Debug, Clone)]
pub struct McpRequest {
    /// The HTTP method (`POST` for JSON-RPC, `GET` or `DELETE` for session streams).
    pub http_method: Method,
    /// The JSON-RPC method of a POST (`initialize`, `tools/list`, `tools/call`, ...).
    pub rpc_method: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// For `tools/call`: the tool's name.
    pub tool: Option<String>,
    /// For `tools/call`: its arguments.
    pub arguments: Option<Value>,
}

/// A running fake MCP server; stopped when dropped.
pub struct FakeMcp {
    address: SocketAddr,
    log: Arc<watch::Sender<Vec<McpRequest>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl FakeMcp {
    /// Starts rmcp's Streamable HTTP server with the test tools.
    pub async fn start_rmcp() -> Self {
        Self::start_rmcp_on(Ipv4Addr::LOCALHOST.into()).await
    }

    /// Starts rmcp's server listening on `ip` (an unspecified address listens on every
    /// interface of this host).
    pub async fn start_rmcp_on(ip: IpAddr) -> Self {
        let stop = CancellationToken::new();
        let service: StreamableHttpService<TimeServer, LocalSessionManager> =
            StreamableHttpService::new(
                || Ok(TimeServer::new()),
                Default::default(),
                StreamableHttpServerConfig::default()
                    .with_sse_keep_alive(None)
                    .with_cancellation_token(stop.child_token()),
            );
        Self::serve(Router::new().nest_service(MCP_PATH, service), stop, ip).await
    }

    /// Starts the plain server, answering `method` with `flood` (see [`Flood`]).
    pub async fn start_flooding(method: &'static str, flood: Flood) -> Self {
        let router = Router::new().route(
            MCP_PATH,
            post(move |message| flooding(method, flood, message))
                .get(no_stream)
                .delete(no_stream),
        );
        Self::serve(router, CancellationToken::new(), Ipv4Addr::LOCALHOST.into()).await
    }

    /// Starts the plain JSON-RPC-over-POST server.
    pub async fn start_plain_json() -> Self {
        let router =
            Router::new().route(MCP_PATH, post(plain_json).get(no_stream).delete(no_stream));
        Self::serve(router, CancellationToken::new(), Ipv4Addr::LOCALHOST.into()).await
    }

    async fn serve(router: Router, stop: CancellationToken, ip: IpAddr) -> Self {
        let log = Arc::new(watch::channel(Vec::new()).0);
        let router = router.layer(middleware::from_fn_with_state(log.clone(), record));
        let listener = TcpListener::bind((ip, 0)).await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
        });
        Self {
            address,
            log,
            stop,
            task,
        }
    }

    /// The server's MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}{MCP_PATH}", self.address)
    }

    /// The same endpoint under another host (a name such as `localhost`, an IPv4 address or
    /// an IPv6 address in brackets).
    pub fn url_on(&self, host: &str) -> String {
        format!("http://{host}:{}{MCP_PATH}", self.address.port())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// `127.0.0.1:PORT`, as `allowed_hosts` and `forward_user_token_hosts` name it.
    pub fn authority(&self) -> String {
        self.address.to_string()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<McpRequest> {
        self.log.borrow().clone()
    }

    /// How many JSON-RPC requests of this method were received.
    pub fn count(&self, rpc_method: &str) -> usize {
        self.log
            .borrow()
            .iter()
            .filter(|request| request.rpc_method.as_deref() == Some(rpc_method))
            .count()
    }

    /// The `tools/call` requests received so far.
    pub fn calls(&self) -> Vec<McpRequest> {
        self.requests()
            .into_iter()
            .filter(|request| request.rpc_method.as_deref() == Some("tools/call"))
            .collect()
    }

    /// Waits until what was received satisfies `done`, and returns it.
    pub async fn wait_for(&self, done: impl Fn(&[McpRequest]) -> bool) -> Vec<McpRequest> {
        let mut log = self.log.subscribe();
        let waited = tokio::time::timeout(PATIENCE, log.wait_for(|requests| done(requests))).await;
        match waited {
            Ok(Ok(requests)) => requests.clone(),
            _ => panic!(
                "the MCP server never got what was expected: {:#?}",
                self.requests()
            ),
        }
    }
}

impl Drop for FakeMcp {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

/// Records each request, then hands it on unchanged.
async fn record(
    State(log): State<Arc<watch::Sender<Vec<McpRequest>>>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, 1 << 20).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let message: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let is_call = message["method"] == "tools/call";
    log.send_modify(|log| {
        log.push(McpRequest {
            http_method: parts.method.clone(),
            rpc_method: message["method"].as_str().map(str::to_owned),
            authorization: parts
                .headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            tool: is_call
                .then(|| message["params"]["name"].as_str().map(str::to_owned))
                .flatten(),
            arguments: is_call.then(|| message["params"]["arguments"].clone()),
        })
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

// The rmcp server.

/// Arguments of `get_current_time`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct TimeRequest {
    /// An IANA time zone such as `Europe/Paris`.
    timezone: String,
}

/// Arguments of `echo`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct EchoRequest {
    /// The text to send back.
    text: String,
}

/// Arguments of `repeat`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct RepeatRequest {
    /// The text to repeat.
    text: String,
    /// How many times.
    times: usize,
}

#[derive(Debug, Clone)]
struct TimeServer {
    tool_router: ToolRouter<Self>,
}

impl TimeServer {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl TimeServer {
    #[tool(description = "The current time in a time zone.")]
    async fn get_current_time(
        &self,
        Parameters(TimeRequest { timezone }): Parameters<TimeRequest>,
    ) -> String {
        format!("It is 12:00 in {timezone}.")
    }

    #[tool(description = "Sends the text back.")]
    async fn echo(&self, Parameters(EchoRequest { text }): Parameters<EchoRequest>) -> String {
        text
    }

    #[tool(description = "The text, repeated.")]
    async fn repeat(
        &self,
        Parameters(RepeatRequest { text, times }): Parameters<RepeatRequest>,
    ) -> String {
        text.repeat(times)
    }

    #[tool(description = "Always reports an error.")]
    async fn fail(&self) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text("the clock is broken")])
    }

    #[tool(description = "Always answers with a JSON-RPC error.")]
    async fn reject(&self) -> Result<CallToolResult, ErrorData> {
        Err(ErrorData::invalid_params("no such clock", None))
    }

    #[tool(description = "Never answers.")]
    async fn slow(&self) -> String {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        "too late".to_owned()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for TimeServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

// The plain JSON-RPC server.

/// Answers one JSON-RPC message the way simple servers do: always `200 application/json`.
async fn plain_json(Json(message): Json<Value>) -> Json<Value> {
    let Some(id) = message.get("id").cloned() else {
        // A notification needs no answer; such servers send an empty object anyway.
        return Json(json!({}));
    };
    let params = &message["params"];
    let outcome = match message["method"].as_str().unwrap_or_default() {
        "initialize" => Ok(json!({
            "protocolVersion": "2024-11-05",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "timezone", "version": "1.0.0"},
        })),
        "tools/list" => Ok(match params["cursor"].as_str() {
            None => json!({"tools": [time_tool()], "nextCursor": "page-2"}),
            Some(_) => json!({"tools": [structured_tool()]}),
        }),
        "tools/call" => match params["name"].as_str().unwrap_or_default() {
            "get_current_time" => {
                let timezone = params["arguments"]["timezone"].as_str().unwrap_or("UTC");
                Ok(json!({
                    "content": [{"type": "text", "text": format!("It is 09:30 in {timezone}.")}],
                    "isError": false,
                }))
            }
            "structured_only" => Ok(json!({
                "content": [],
                "structuredContent": {"zones": ["UTC", "Europe/Paris"]},
            })),
            _ => Err((-32602, "Unknown tool")),
        },
        "ping" => Ok(json!({})),
        _ => Err((-32601, "Method not found")),
    };
    Json(match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, text)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": text}})
        }
    })
}

fn time_tool() -> Value {
    json!({
        "name": "get_current_time",
        "description": "The current time in a time zone.",
        "inputSchema": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
        "outputSchema": {
            "type": "object",
            "properties": {"time": {"type": "string"}},
            "required": ["time"],
        },
    })
}

fn structured_tool() -> Value {
    json!({
        "name": "structured_only",
        "description": "The known time zones, as structured content only.",
    })
}

/// The plain server has no SSE stream and no sessions to delete.
async fn no_stream() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

// The flooding server.

/// How a flooding server answers the method it floods.
#[derive(Debug, Clone, Copy)]
pub enum Flood {
    /// A plain JSON answer (chunked, no length given) whose one text goes on for this many
    /// bytes.
    Json(usize),
    /// An SSE answer of one event whose text goes on for this many bytes.
    Event(usize),
    /// An SSE answer of small notifications (1 KiB each), as fast as they are read, that never
    /// comes to the answer.
    Events,
}

/// Bytes of each piece of a flood.
const FLOOD_PIECE: usize = 64 * 1024;

/// Answers as the plain server does, with one tool, `flood`, except `method`, answered with
/// `flood`.
async fn flooding(method: &'static str, flood: Flood, Json(message): Json<Value>) -> Response {
    let Some(id) = message.get("id").cloned() else {
        return Json(json!({})).into_response();
    };
    let called = message["method"].as_str().unwrap_or_default();
    if called == method {
        return flood_answer(&id, called, flood);
    }
    let result = match called {
        "initialize" => json!({
            "protocolVersion": "2024-11-05",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "flood", "version": "1.0.0"},
        }),
        "tools/list" => json!({"tools": [{
            "name": "flood",
            "description": "Answers with a flood.",
            "inputSchema": {"type": "object"},
        }]}),
        "tools/call" => json!({"content": [{"type": "text", "text": "calm"}]}),
        _ => json!({}),
    };
    Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

/// The answer to `method` (request `id`) as `flood` says.
fn flood_answer(id: &Value, method: &str, flood: Flood) -> Response {
    // A valid answer whose one string field holds the filler.
    let (open, close) = match method {
        "initialize" => (
            r#"{"protocolVersion":"2024-11-05","capabilities":{"tools":{}},"serverInfo":{"name":"flood","version":""#,
            r#""}}}"#,
        ),
        "tools/list" => (
            r#"{"tools":[{"name":"flood","inputSchema":{"type":"object"},"description":""#,
            r#""}]}}"#,
        ),
        _ => (r#"{"content":[{"type":"text","text":""#, r#""}]}}"#),
    };
    let open = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{open}"#);
    let (content_type, pieces) = match flood {
        Flood::Json(filler) => ("application/json", sized(open, filler, close.to_owned())),
        Flood::Event(filler) => (
            "text/event-stream",
            sized(format!("data: {open}"), filler, format!("{close}\n\n")),
        ),
        Flood::Events => ("text/event-stream", endless_events()),
    };
    ([(CONTENT_TYPE, content_type)], Body::from_stream(pieces)).into_response()
}

type Pieces = futures::stream::BoxStream<'static, Result<Bytes, std::convert::Infallible>>;

/// `open`, `filler` bytes of `x` in pieces, then `close`.
fn sized(open: String, filler: usize, close: String) -> Pieces {
    let piece = Bytes::from(vec![b'x'; FLOOD_PIECE]);
    let fill = futures::stream::unfold(filler, move |left| {
        let piece = piece.clone();
        async move {
            (left > 0).then(|| {
                let size = left.min(FLOOD_PIECE);
                (Ok(piece.slice(..size)), left - size)
            })
        }
    });
    let open = futures::stream::once(async move { Ok(Bytes::from(open)) });
    let close = futures::stream::once(async move { Ok(Bytes::from(close)) });
    Box::pin(open.chain(fill).chain(close))
}

/// Logging notifications, again and again.
fn endless_events() -> Pieces {
    let event = format!(
        "data: {}\n\n",
        json!({
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": {"level": "info", "data": "x".repeat(1024)},
        })
    );
    let piece = Bytes::from(event.repeat(FLOOD_PIECE / event.len()));
    Box::pin(futures::stream::repeat_with(move || Ok(piece.clone())))
}
