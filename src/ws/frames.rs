//! The WebSocket frame protocol: parsing client frames and rendering server frames. The only
//! code that knows what a frame looks like.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::chat::events::LiveEvent;
use crate::db::ConversationStatus;
use crate::ids::IdCodec;
use crate::routes::dto::ExchangeOut;

/// `start_conversation` data.
#[derive(Debug, Default, Deserialize)]
pub struct StartConversation {
    /// Title.
    pub title: Option<String>,
    /// System prompt.
    pub system_message: Option<String>,
    /// Model.
    pub model: Option<String>,
}

/// `send_message` data.
#[derive(Debug, Deserialize)]
pub struct SendMessage {
    /// Conversation; optional on a connection bound to one.
    pub conversation_id: Option<String>,
    /// The user's message.
    pub content: String,
}

/// Data naming a conversation (`stop_generation`, `end_conversation`).
#[derive(Debug, Deserialize)]
pub struct ConversationRef {
    /// Conversation; optional on a connection bound to one.
    pub conversation_id: Option<String>,
}

/// `resume` data.
#[derive(Debug, Deserialize)]
pub struct ResumeRequest {
    /// Conversation; optional on a connection bound to one.
    pub conversation_id: Option<String>,
    /// The last chunk the client has (0 or absent: from the start).
    #[serde(default)]
    pub after_seq: u64,
}

/// A client frame.
#[derive(Debug)]
pub enum ClientFrame {
    /// Start a conversation.
    Start(StartConversation),
    /// Send a message and get the reply.
    Send(SendMessage),
    /// Stop the reply being generated.
    Stop(ConversationRef),
    /// End a conversation.
    End(ConversationRef),
    /// Pick up the latest reply after a reconnect.
    Resume(ResumeRequest),
    /// Keep-alive.
    Ping,
}

/// A frame that could not be understood: the type to answer with and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The request's type, or `error` when it has none.
    pub kind: String,
    /// A human message.
    pub message: String,
}

impl FrameError {
    fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.into(),
        }
    }
}

/// Parses `{"type": ..., "data": {...}}`; older clients name the type `action`, which counts
/// when `type` is absent.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value =
        serde_json::from_str(text).map_err(|_| FrameError::new("error", "Invalid JSON"))?;
    let Value::Object(mut frame) = value else {
        return Err(FrameError::new("error", "A frame must be a JSON object"));
    };
    let kind = match frame.get("type").or_else(|| frame.get("action")) {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err(FrameError::new("error", "Missing field: type")),
    };
    // PostgreSQL cannot store a NUL character in text; no store should get one.
    if crate::extract::has_nul_escape(text.as_bytes()) {
        return Err(FrameError::new(
            &kind,
            "Text must not contain NUL characters",
        ));
    }
    let data = match frame.remove("data") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(data @ Value::Object(_)) => data,
        Some(_) => return Err(FrameError::new(&kind, "Field `data` must be an object")),
    };
    match kind.as_str() {
        "start_conversation" => data_of(&kind, data).map(ClientFrame::Start),
        "send_message" => data_of(&kind, data).map(ClientFrame::Send),
        "stop_generation" => data_of(&kind, data).map(ClientFrame::Stop),
        "end_conversation" => data_of(&kind, data).map(ClientFrame::End),
        "resume" => data_of(&kind, data).map(ClientFrame::Resume),
        "ping" => Ok(ClientFrame::Ping),
        _ => Err(FrameError::new(
            &kind,
            format!("Unknown message type: {}", truncate(&kind, 64)),
        )),
    }
}

fn data_of<T: DeserializeOwned>(kind: &str, data: Value) -> Result<T, FrameError> {
    serde_json::from_value(data).map_err(|err| {
        let reason = err.to_string();
        let message = match reason.strip_prefix("missing field ") {
            Some(field) => format!("Missing field: {}", field.trim_matches('`')),
            None => format!("Invalid data: {reason}"),
        };
        FrameError::new(kind, message)
    })
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

/// `{"type": kind, "success": true, "data": data}`.
pub fn success(kind: &str, data: Value) -> String {
    json!({"type": kind, "success": true, "data": data}).to_string()
}

/// `{"type": kind, "success": false, "error": message}`.
pub fn failure(kind: &str, message: &str) -> String {
    json!({"type": kind, "success": false, "error": message}).to_string()
}

/// `{"type": kind, "success": true, "data": data}` for any serializable data.
pub fn success_with<T: Serialize>(kind: &str, data: &T) -> String {
    #[derive(Serialize)]
    struct Answer<'a, T> {
        #[serde(rename = "type")]
        kind: &'a str,
        success: bool,
        data: &'a T,
    }
    serde_json::to_string(&Answer {
        kind,
        success: true,
        data,
    })
    .expect("frames serialize")
}

/// The data of an `end_conversation` answer and of its broadcast.
#[derive(Debug, Serialize)]
pub struct EndedOut {
    /// Conversation's public ID.
    pub conversation_id: String,
    /// Its status now.
    pub status: ConversationStatus,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// Frames that answer no request, tagged by their type.
#[derive(Debug, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ServerEvent<'a> {
    /// A reply began.
    AiResponseStart {
        /// Conversation's public ID.
        conversation_id: &'a str,
        /// The reply's id.
        generation_id: &'a str,
    },
    /// A piece of the reply being generated.
    AiResponseChunk {
        /// Conversation's public ID.
        conversation_id: &'a str,
        /// The reply's id.
        generation_id: &'a str,
        /// Position within the reply, from 1.
        seq: u64,
        /// The text.
        delta: &'a str,
    },
    /// The reply calls a tool.
    ToolCall {
        /// Conversation's public ID.
        conversation_id: &'a str,
        /// The reply's id.
        generation_id: &'a str,
        /// The tool.
        name: &'a str,
        /// Its arguments.
        arguments: &'a Value,
    },
    /// A tool the reply called answered (or failed).
    ToolResult {
        /// Conversation's public ID.
        conversation_id: &'a str,
        /// The reply's id.
        generation_id: &'a str,
        /// The tool.
        name: &'a str,
        /// Whether it answered.
        ok: bool,
    },
    /// A reply stored on a conversation this connection follows.
    MessageBroadcast(ExchangeOut),
    /// A conversation this connection follows was ended.
    ConversationEnded(EndedOut),
}

impl ServerEvent<'_> {
    /// The frame's text.
    pub fn render(&self) -> String {
        serde_json::to_string(self).expect("frames serialize")
    }
}

/// The frame of a live event for a connection; `mine` says whether the connection asked
/// for the reply (or resumed it), which then ends with the `send_message` answer instead
/// of a broadcast. `None` when the event means nothing to the connection.
pub fn live(ids: &IdCodec, event: &LiveEvent, mine: bool) -> Option<String> {
    let frame = match event {
        LiveEvent::ReplyStarted {
            conversation,
            generation,
        } => ServerEvent::AiResponseStart {
            conversation_id: &ids.conversation.encode(*conversation),
            generation_id: generation,
        }
        .render(),
        LiveEvent::ReplyChunk {
            conversation,
            generation,
            seq,
            delta,
        } => ServerEvent::AiResponseChunk {
            conversation_id: &ids.conversation.encode(*conversation),
            generation_id: generation,
            seq: *seq,
            delta,
        }
        .render(),
        LiveEvent::ToolCall {
            conversation,
            generation,
            name,
            arguments,
        } => ServerEvent::ToolCall {
            conversation_id: &ids.conversation.encode(*conversation),
            generation_id: generation,
            name,
            arguments,
        }
        .render(),
        LiveEvent::ToolResult {
            conversation,
            generation,
            name,
            ok,
        } => ServerEvent::ToolResult {
            conversation_id: &ids.conversation.encode(*conversation),
            generation_id: generation,
            name,
            ok: *ok,
        }
        .render(),
        LiveEvent::ReplyDone { exchange, .. } if mine => {
            success_with("send_message", &ExchangeOut::new(exchange, ids))
        }
        LiveEvent::ReplyDone { exchange, .. } => {
            ServerEvent::MessageBroadcast(ExchangeOut::new(exchange, ids)).render()
        }
        LiveEvent::ReplyFailed {
            conversation,
            error,
            partial,
            ..
        } if mine => {
            // A partial reply that was stored is named, so the client can show it.
            let data = json!({
                "conversation_id": ids.conversation.encode(*conversation),
                "message_id": partial.as_ref().map(|p| ids.message.encode(p.ai_message.id)),
            });
            json!({"type": "send_message", "success": false, "error": error.as_ref(), "data": data})
                .to_string()
        }
        LiveEvent::ReplyFailed { .. } => return None,
        LiveEvent::Ended {
            conversation,
            status,
            ended_at,
        } => ServerEvent::ConversationEnded(EndedOut {
            conversation_id: ids.conversation.encode(*conversation),
            status: *status,
            ended_at: *ended_at,
        })
        .render(),
    };
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_errors_name_the_problem() {
        assert!(matches!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping)));
        let send =
            parse(r#"{"type":"send_message","data":{"conversation_id":"x","content":"hi"}}"#);
        assert!(matches!(send, Ok(ClientFrame::Send(s)) if s.content == "hi"));
        assert_eq!(parse("{nope").unwrap_err().message, "Invalid JSON");
        assert_eq!(parse("[1]").unwrap_err().kind, "error");
        assert_eq!(
            parse(r#"{"data":{}}"#).unwrap_err().message,
            "Missing field: type"
        );
        let missing = parse(r#"{"type":"send_message","data":{}}"#).unwrap_err();
        assert_eq!(missing.kind, "send_message");
        assert_eq!(missing.message, "Missing field: content");
        let unknown = parse(r#"{"type":"dance"}"#).unwrap_err();
        assert_eq!(unknown.kind, "dance");
        let older = parse(r#"{"action":"send_message","data":{"content":"hi"}}"#);
        assert!(matches!(older, Ok(ClientFrame::Send(s)) if s.content == "hi"));
        let both = parse(r#"{"type":"ping","action":"send_message"}"#);
        assert!(matches!(both, Ok(ClientFrame::Ping)));
        assert_eq!(
            parse(r#"{"action":"dance"}"#).unwrap_err().message,
            "Unknown message type: dance"
        );
        let wrong = parse(r#"{"type":"send_message","data":{"content":5}}"#).unwrap_err();
        assert!(
            wrong.message.starts_with("Invalid data"),
            "{}",
            wrong.message
        );
    }
}
