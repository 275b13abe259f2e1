//! The tools of one chat turn: what is offered to the model, and calling what it asks for.

use serde::Serialize;
use serde_json::Value;

use super::chat::TurnRequest;
use crate::chat::llm::ToolSpec;
use crate::state::AppState;

/// What a tool call did, as the stored reply's metadata records it.
#[derive(Debug, Clone, Serialize)]
pub struct ToolRecord {
    /// The tool's name as offered to the model.
    pub tool: String,
    /// The registered server that has it, when known.
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
}

impl TurnTools {
    /// The tools of the conversation owner's active servers (none for anonymous chats).
    pub async fn for_turn(_state: &AppState, _owner: Option<i64>, _request: &TurnRequest) -> Self {
        Self::default()
    }

    /// What the model is offered.
    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    /// Calls a tool by the name the model used.
    pub async fn call(&self, name: &str, _arguments: Value) -> ToolResult {
        ToolResult {
            text: format!("There is no tool named {name}."),
            record: ToolRecord {
                tool: name.to_owned(),
                server_id: None,
                ok: false,
            },
        }
    }
}
