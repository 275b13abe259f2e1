//! A tool's result as text for the model: its text content (or its structured content as JSON
//! when that is all it returned), cut to the configured size.

use rmcp::model::{CallToolResult, ContentBlock, ResourceContents};

use super::error::McpError;

/// The text of a tool's result, or the tool's own error when it reported one.
pub(crate) fn tool_output(result: CallToolResult, max_chars: usize) -> Result<String, McpError> {
    let mut text = result
        .content
        .iter()
        .map(block_text)
        .collect::<Vec<_>>()
        .join("\n");
    if text.trim().is_empty() {
        text = match result.structured_content {
            Some(value) if !value.is_null() => value.to_string(),
            _ => String::new(),
        };
    }
    if result.is_error == Some(true) {
        if text.trim().is_empty() {
            text = "it reported an error without details".to_owned();
        }
        return Err(McpError::Tool(cut(text, max_chars)));
    }
    if text.trim().is_empty() {
        return Ok("The tool returned no content.".to_owned());
    }
    Ok(cut(text, max_chars))
}

fn block_text(block: &ContentBlock) -> String {
    match block {
        ContentBlock::Text(text) => text.text.clone(),
        ContentBlock::Resource(embedded) => match &embedded.resource {
            ResourceContents::TextResourceContents { text, .. } => text.clone(),
            ResourceContents::BlobResourceContents { uri, .. } => {
                format!("[binary resource {uri} omitted]")
            }
            _ => "[resource omitted]".to_owned(),
        },
        ContentBlock::ResourceLink(link) => format!("[resource {}]", link.uri),
        ContentBlock::Image(image) => format!("[{} image omitted]", image.mime_type),
        ContentBlock::Audio(audio) => format!("[{} audio omitted]", audio.mime_type),
        _ => "[content omitted]".to_owned(),
    }
}

/// The text, cut to `max_chars` characters with a note saying so when it is longer.
pub(crate) fn cut(text: String, max_chars: usize) -> String {
    let Some((end, _)) = text.char_indices().nth(max_chars) else {
        return text;
    };
    let total = text.chars().count();
    let mut shortened = text;
    shortened.truncate(end);
    shortened.push_str(&format!(
        "\n[The result was cut to {max_chars} of its {total} characters.]"
    ));
    shortened
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_joined_and_structured_content_is_the_fallback() {
        let result =
            CallToolResult::success(vec![ContentBlock::text("a"), ContentBlock::text("b")]);
        assert_eq!(tool_output(result, 100).unwrap(), "a\nb");

        let mut result = CallToolResult::success(vec![]);
        result.structured_content = Some(json!({"time": "12:00"}));
        assert_eq!(tool_output(result, 100).unwrap(), r#"{"time":"12:00"}"#);
    }

    #[test]
    fn an_error_result_is_the_tools_message() {
        let result = CallToolResult::error(vec![ContentBlock::text("no such zone")]);
        let error = tool_output(result, 100).unwrap_err();
        assert_eq!(error.to_string(), "no such zone");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(cut("short".to_owned(), 5), "short");
        let cut_text = cut("ééééé".to_owned(), 3);
        assert!(cut_text.starts_with("ééé\n[The result was cut to 3 of its 5 characters.]"));
    }
}
