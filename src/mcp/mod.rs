//! Tools from users' MCP (Model Context Protocol) servers, offered to the model during a turn.
//!
//! [`McpTools`] lists the tools of a turn's servers and calls them, speaking MCP over the
//! Streamable HTTP transport of rmcp (which also serves the simple servers that answer each
//! POST with a plain JSON body and no session). It owns the safety rules for reaching
//! servers that users register: the address guard, which token each server gets, bounded
//! time, bytes received and result size. The parts: `connect` (HTTP clients, credentials,
//! sessions), `guard` (which addresses, with `special_addresses` and `local_addresses`),
//! `response_bound` (the bytes a list or call may receive), `listing` (reading tool lists),
//! `cache` (tool lists kept), `naming` (names the model sees), `render` (results as text) and
//! `error`.

mod cache;
mod connect;
mod error;
mod guard;
mod listing;
mod local_addresses;
mod naming;
mod render;
mod response_bound;
mod special_addresses;

use std::{fmt, future::Future, sync::Arc, time::Duration};

use futures::future::join_all;
use rmcp::model::CallToolRequestParams;
use serde_json::Value;

use crate::telemetry::error_chain;
use cache::{ListedTool, ToolList, ToolsCache};
use connect::Connector;
use error::McpError;
pub use guard::{HostLookup, SystemLookup};
use response_bound::ResponseBound;

/// Settings of the MCP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSettings {
    /// Bounds each call and each list of one server, connection included
    /// (`MCP_TIMEOUT_SECONDS`, default 20 s).
    pub timeout: Duration,
    /// Longest tool result given to the model, in characters (`MCP_MAX_RESULT_CHARS`, default
    /// 20 000); longer ones are cut with a note saying so.
    pub max_result_chars: usize,
    /// Bytes a list or call may receive from its server (`MCP_MAX_RESPONSE_BYTES`, default
    /// 4 MiB): a JSON body, one SSE event, and a session's SSE events together; past it the
    /// server's answer is dropped unread and the list or call fails.
    pub max_response_bytes: usize,
    /// How long a server's tool list is reused (`MCP_TOOLS_CACHE_SECONDS`, default 60 s; zero
    /// lists every time).
    pub tools_cache: Duration,
    /// Hosts (`host` or `host:port`) that receive the user's own token
    /// (`MCP_FORWARD_USER_TOKEN_HOSTS`); every other server gets its API key, if it has one.
    pub forward_user_token_hosts: Vec<String>,
    /// Hosts (`host:port`, or `host` for every port) reached even when they resolve to an
    /// address that is not globally routable or is this host's own (`MCP_ALLOWED_HOSTS`).
    pub allowed_hosts: Vec<String>,
}

impl From<&crate::config::McpConfig> for McpSettings {
    fn from(config: &crate::config::McpConfig) -> Self {
        Self {
            timeout: config.timeout,
            max_result_chars: config.max_result_chars,
            max_response_bytes: config.max_response_bytes,
            tools_cache: config.tools_cache,
            forward_user_token_hosts: config.forward_user_token_hosts.clone(),
            allowed_hosts: config.allowed_hosts.clone(),
        }
    }
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
            max_result_chars: 20_000,
            max_response_bytes: 4 * 1024 * 1024,
            tools_cache: Duration::from_secs(60),
            forward_user_token_hosts: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// One registered server as the turn knows it.
#[derive(Clone, PartialEq, Eq)]
pub struct McpEndpoint {
    /// The registry's key of the server.
    pub id: i64,
    /// The name the user gave it.
    pub name: String,
    /// Its Streamable HTTP endpoint (`http` or `https`).
    pub url: String,
    /// Sent as a bearer token when the user's own token is not forwarded to it.
    pub api_key: Option<String>,
}

impl fmt::Debug for McpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpEndpoint")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    /// The [`McpEndpoint::id`] of the server that offers it.
    pub server_id: i64,
    /// The name the model calls it by, unique in one turn: the tool's own name, or
    /// `<server name>__<tool>` when two servers offer the same name, limited to
    /// `[a-zA-Z0-9_-]{1,64}`.
    pub name: String,
    /// The server's own name for it.
    pub tool: String,
    /// What it does, in the server's words.
    pub description: Option<String>,
    /// A JSON Schema object for its arguments (`{"type":"object"}` when the server gave none).
    pub input_schema: Value,
}

/// The MCP client of the service: built once at start and cheap to clone.
#[derive(Clone)]
pub struct McpTools {
    inner: Arc<Inner>,
}

impl fmt::Debug for McpTools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpTools")
            .field("timeout", &self.inner.timeout)
            .field("max_result_chars", &self.inner.max_result_chars)
            .field("max_response_bytes", &self.inner.max_response_bytes)
            .finish_non_exhaustive()
    }
}

struct Inner {
    timeout: Duration,
    max_result_chars: usize,
    max_response_bytes: usize,
    connector: Connector,
    cache: ToolsCache,
}

impl McpTools {
    /// Builds the client, with its HTTP connection pools, resolving names with the system's
    /// resolver.
    pub fn new(settings: McpSettings) -> Self {
        Self::with_lookup(settings, Arc::new(SystemLookup))
    }

    /// Builds the client resolving names with `lookup` (tests: names that stand for this
    /// host's own addresses). The address guard applies to what `lookup` answers.
    pub fn with_lookup(settings: McpSettings, lookup: Arc<dyn HostLookup>) -> Self {
        Self {
            inner: Arc::new(Inner {
                timeout: settings.timeout,
                max_result_chars: settings.max_result_chars,
                max_response_bytes: settings.max_response_bytes,
                connector: Connector::new(&settings, lookup),
                cache: ToolsCache::new(settings.tools_cache),
            }),
        }
    }

    /// The tools of these servers, listed at the same time (each list cached per server URL
    /// and credentials for `tools_cache`). A server that is unreachable, refused by the
    /// address guard or answers badly is skipped with a warning in the log.
    pub async fn list(&self, servers: &[McpEndpoint], user_token: Option<&str>) -> Vec<McpTool> {
        let lists =
            join_all(servers.iter().map(|server| async move {
                (server, self.server_tools(server, user_token).await)
            }))
            .await;

        let mut offered: Vec<(&McpEndpoint, ListedTool)> = Vec::new();
        for (server, list) in lists {
            match list {
                Ok(tools) => offered.extend(tools.iter().map(|tool| (server, tool.clone()))),
                Err(error) => tracing::warn!(
                    server_id = server.id,
                    server = %server.name,
                    error = %error_chain(&error),
                    "MCP server skipped: its tools could not be listed"
                ),
            }
        }
        let names = naming::assign(
            &offered
                .iter()
                .map(|(server, tool)| (server.name.as_str(), tool.name.as_str()))
                .collect::<Vec<_>>(),
        );
        offered
            .into_iter()
            .zip(names)
            .map(|((server, tool), name)| McpTool {
                server_id: server.id,
                name,
                tool: tool.name,
                description: tool.description,
                input_schema: tool.input_schema,
            })
            .collect()
    }

    /// Calls a tool on its server. Never fails the turn: `Err` is a message for the model
    /// ("The tool X failed: ..."). The result is the tool's text content (or its structured
    /// content as JSON text when that is all it returned), cut to `max_result_chars`, and the
    /// whole call is bounded by `timeout` and `max_response_bytes`.
    pub async fn call(
        &self,
        tool: &McpTool,
        server: &McpEndpoint,
        arguments: Value,
        user_token: Option<&str>,
    ) -> Result<String, String> {
        self.try_call(tool, server, arguments, user_token)
            .await
            .map_err(|error| {
                match &error {
                    // The tool's own error is part of its result: not for the info log.
                    McpError::Tool(message) => tracing::debug!(
                        server_id = server.id,
                        tool = %tool.tool,
                        message,
                        "MCP tool reported an error"
                    ),
                    _ => tracing::warn!(
                        server_id = server.id,
                        server = %server.name,
                        tool = %tool.tool,
                        error = %error_chain(&error),
                        "MCP tool call failed"
                    ),
                }
                format!("The tool {} failed: {error}", tool.name)
            })
    }

    async fn try_call(
        &self,
        tool: &McpTool,
        server: &McpEndpoint,
        arguments: Value,
        user_token: Option<&str>,
    ) -> Result<String, McpError> {
        if tool.server_id != server.id {
            return Err(McpError::WrongServer);
        }
        let mut request = CallToolRequestParams::new(tool.tool.clone());
        match arguments {
            Value::Object(arguments) => request = request.with_arguments(arguments),
            Value::Null => {}
            _ => return Err(McpError::Arguments),
        }
        let target = self.inner.connector.target(server, user_token)?;
        tracing::debug!(server_id = server.id, tool = %tool.tool, arguments = ?request.arguments, "MCP tool call");
        let connector = &self.inner.connector;
        let result = self
            .bounded(|bound| async move {
                let session = connector.open(&target, bound).await?;
                Ok(session.call_tool(request).await?)
            })
            .await?;
        render::tool_output(result, self.inner.max_result_chars)
    }

    /// The tools of one server, from the cache or from the server.
    async fn server_tools(
        &self,
        server: &McpEndpoint,
        user_token: Option<&str>,
    ) -> Result<ToolList, McpError> {
        let target = self.inner.connector.target(server, user_token)?;
        if let Some(tools) = self.inner.cache.get(&target) {
            return Ok(tools);
        }
        let (connector, listed) = (&self.inner.connector, &target);
        let tools = self
            .bounded(|bound| async move {
                let session = connector.open(listed, bound).await?;
                listing::all_tools(&session).await
            })
            .await?;
        let tools = Arc::new(tools);
        self.inner.cache.put(target, Arc::clone(&tools));
        Ok(tools)
    }

    /// Runs one list or call within the timeout and the bytes it may receive: `work` opens
    /// its session counting against the bound it is given.
    async fn bounded<T, F>(&self, work: impl FnOnce(ResponseBound) -> F) -> Result<T, McpError>
    where
        F: Future<Output = Result<T, McpError>>,
    {
        let bound = ResponseBound::new(self.inner.max_response_bytes);
        let work = bound.enforce(work(bound.clone()));
        tokio::time::timeout(self.inner.timeout, work)
            .await
            .map_err(|_| McpError::Timeout(self.inner.timeout))?
    }
}
