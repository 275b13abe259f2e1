//! The tools of one chat turn: the tools of the conversation owner's active MCP servers,
//! offered to the model, and calling what it asks for. A server or tool that fails never
//! fails the turn: the model is told, and the log says why.

use serde::Serialize;
use serde_json::Value;

use crate::chat::llm::ToolSpec;
use crate::config::Secret;
use crate::mcp::{McpEndpoint, McpTool, McpTools};
use crate::state::AppState;

/// What a tool call did, as the stored reply's metadata records it.
#[derive(Debug, Clone, Serialize)]
pub struct ToolRecord {
    /// The tool's name as offered to the model.
    pub tool: String,
    /// The public ID of the registered server that has it, when known.
    pub server_id: Option<String>,
    /// Whether it answered.
    pub ok: bool,
}

/// A tool call's answer for the model, and its record.
pub struct ToolResult {
    /// What the model is told.
    pub text: String,
    /// What is recorded.
    pub record: ToolRecord,
}

/// The tools offered in one turn.
#[derive(Default)]
pub struct TurnTools {
    specs: Vec<ToolSpec>,
    tools: Vec<McpTool>,
    servers: Vec<McpEndpoint>,
    /// Public IDs of the servers, in the order of `servers`.
    server_ids: Vec<String>,
    user_token: Option<String>,
    client: Option<McpTools>,
}

impl TurnTools {
    /// The tools of the conversation owner's active servers; none for anonymous chats or
    /// when listing fails.
    pub async fn for_turn(
        state: &AppState,
        owner: Option<i64>,
        user_token: Option<&Secret>,
    ) -> Self {
        let Some(owner) = owner else {
            return Self::default();
        };
        let registered = match state.store.active_mcp_servers_with_keys(owner).await {
            Ok(registered) => registered,
            Err(err) => {
                tracing::warn!(error = %err, "MCP servers could not be read; no tools this turn");
                return Self::default();
            }
        };
        if registered.is_empty() {
            return Self::default();
        }
        let servers: Vec<McpEndpoint> = registered
            .iter()
            .map(|r| McpEndpoint {
                id: r.server.id,
                name: r.server.name.clone(),
                url: r.server.server_url.clone(),
                api_key: r.api_key.as_ref().map(|k| k.expose().to_owned()),
            })
            .collect();
        let user_token = user_token.map(|t| t.expose().to_owned());
        let tools = state.mcp.list(&servers, user_token.as_deref()).await;
        let specs = tools
            .iter()
            .map(|tool| ToolSpec {
                name: tool.name.clone(),
                description: tool.description.clone(),
                parameters: tool.input_schema.clone(),
            })
            .collect();
        Self {
            specs,
            tools,
            server_ids: servers
                .iter()
                .map(|s| state.ids.mcp_server.encode(s.id))
                .collect(),
            servers,
            user_token,
            client: Some(state.mcp.clone()),
        }
    }

    /// What the model is offered.
    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    /// Calls a tool by the name the model used.
    pub async fn call(&self, name: &str, arguments: Value) -> ToolResult {
        let found = self.tools.iter().find(|t| t.name == name).and_then(|tool| {
            let index = self.servers.iter().position(|s| s.id == tool.server_id)?;
            Some((tool, index))
        });
        let (Some((tool, index)), Some(client)) = (found, &self.client) else {
            return ToolResult {
                text: format!("There is no tool named {name}."),
                record: ToolRecord {
                    tool: name.to_owned(),
                    server_id: None,
                    ok: false,
                },
            };
        };
        let answer = client
            .call(
                tool,
                &self.servers[index],
                arguments,
                self.user_token.as_deref(),
            )
            .await;
        let ok = answer.is_ok();
        ToolResult {
            text: answer.unwrap_or_else(|message| message),
            record: ToolRecord {
                tool: name.to_owned(),
                server_id: Some(self.server_ids[index].clone()),
                ok,
            },
        }
    }
}
