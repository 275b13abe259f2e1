//! Reading a server's tools: every page of `tools/list` in one session, read leniently so that
//! one malformed tool (or a missing `inputSchema`) does not hide the server's other tools.

use rmcp::model::{ClientRequest, ListToolsRequest, PaginatedRequestParams, ServerResult};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{cache::ListedTool, connect::Session, error::McpError};

/// Pages of `tools/list` read from one server before giving up on it.
const MAX_PAGES: usize = 50;

/// One page as the server sent it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    tools: Vec<Value>,
    next_cursor: Option<String>,
}

/// Every tool of the server behind this session.
pub(crate) async fn all_tools(session: &Session) -> Result<Vec<ListedTool>, McpError> {
    let mut tools = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let request =
            ListToolsRequest::with_param(PaginatedRequestParams::default().with_cursor(cursor));
        // A list that rmcp's types reject (a tool without `inputSchema`, say) comes back as a
        // custom result: both are read as JSON here.
        let page = match session
            .send_request(ClientRequest::ListToolsRequest(request))
            .await?
        {
            ServerResult::ListToolsResult(list) => serde_json::to_value(list),
            ServerResult::CustomResult(custom) => Ok(custom.0),
            _ => return Err(McpError::UnexpectedAnswer),
        };
        let page: Page = page
            .and_then(serde_json::from_value)
            .map_err(|_| McpError::UnexpectedAnswer)?;
        tools.extend(page.tools.into_iter().filter_map(listed));
        cursor = page.next_cursor;
        if cursor.is_none() {
            return Ok(tools);
        }
    }
    Err(McpError::TooManyPages)
}

/// A tool from its JSON, with an object schema for its arguments (`{"type": "object"}` where
/// the server gave none, `"type": "object"` added where it left the type out); `None` without
/// a name.
fn listed(tool: Value) -> Option<ListedTool> {
    let Value::Object(mut tool) = tool else {
        return None;
    };
    let name = match tool.remove("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => return None,
    };
    let description = match tool.remove("description") {
        Some(Value::String(description)) => Some(description),
        _ => None,
    };
    let mut schema = match tool.remove("inputSchema") {
        Some(Value::Object(schema)) => schema,
        _ => Map::new(),
    };
    schema
        .entry("type")
        .or_insert_with(|| Value::String("object".to_owned()));
    Some(ListedTool {
        name,
        description,
        input_schema: Value::Object(schema),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tools_get_an_object_schema_and_nameless_ones_are_dropped() {
        let tool = listed(json!({"name": "now"})).unwrap();
        assert_eq!(tool.input_schema, json!({"type": "object"}));
        assert_eq!(tool.description, None);

        let tool = listed(json!({
            "name": "convert",
            "description": "Converts.",
            "inputSchema": {"properties": {"to": {"type": "string"}}},
        }))
        .unwrap();
        assert_eq!(tool.description.as_deref(), Some("Converts."));
        assert_eq!(
            tool.input_schema,
            json!({"type": "object", "properties": {"to": {"type": "string"}}})
        );

        assert!(listed(json!({"description": "no name"})).is_none());
        assert!(listed(json!({"name": ""})).is_none());
        assert!(listed(json!("text")).is_none());
    }
}
