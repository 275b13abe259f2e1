//! The WebSocket frame protocol: parsing client frames and rendering server frames. The only
//! code that knows what a frame looks like.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat::events::{LiveEvent, TurnKind};
use crate::db::ConversationStatus;
use crate::dto::ExchangeOut;
use crate::ids::IdCodec;

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

/// `regenerate` data.
#[derive(Debug, Deserialize)]
pub struct RegenerateRequest {
    /// Conversation; optional on a connection bound to one.
    pub conversation_id: Option<String>,
    /// The assistant reply to regenerate; the newest on the active path when absent.
    pub message_id: Option<String>,
}

/// `edit_message` data.
#[derive(Debug, Deserialize)]
pub struct EditRequest {
    /// Conversation; optional on a connection bound to one.
    pub conversation_id: Option<String>,
    /// The user message edited.
    pub message_id: String,
    /// The new text.
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
    /// Generate a new reply beside an earlier one.
    Regenerate(RegenerateRequest),
    /// Store an edited message beside the original and get a reply to it.
    Edit(EditRequest),
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
    // A NUL in what the frame's data keeps is refused below; the search is for frames that
    // have one at all.
    let nul = crate::extract::has_nul_escape(text.as_bytes());
    let data = match frame.remove("data") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(data @ Value::Object(_)) => data,
        Some(_) => return Err(FrameError::new(&kind, "Field `data` must be an object")),
    };
    match kind.as_str() {
        "start_conversation" => data_of(&kind, data, nul).map(ClientFrame::Start),
        "send_message" => data_of(&kind, data, nul).map(ClientFrame::Send),
        "regenerate" => data_of(&kind, data, nul).map(ClientFrame::Regenerate),
        "edit_message" => data_of(&kind, data, nul).map(ClientFrame::Edit),
        "stop_generation" => data_of(&kind, data, nul).map(ClientFrame::Stop),
        "end_conversation" => data_of(&kind, data, nul).map(ClientFrame::End),
        "resume" => data_of(&kind, data, nul).map(ClientFrame::Resume),
        "ping" => Ok(ClientFrame::Ping),
        _ => Err(FrameError::new(
            &kind,
            format!("Unknown message type: {}", truncate(&kind, 64)),
        )),
    }
}

/// The frame's data as `T`; `nul` says the frame has a NUL character somewhere, which is
/// refused if it is in what `T` keeps (PostgreSQL cannot store a NUL character in text).
fn data_of<T: DeserializeOwned>(kind: &str, data: Value, nul: bool) -> Result<T, FrameError> {
    let kept_nul = nul && crate::extract::nul_in_kept::<T>(&data);
    let parsed = serde_json::from_value(data).map_err(|err| {
        let reason = err.to_string();
        let message = match reason.strip_prefix("missing field ") {
            Some(field) => format!("Missing field: {}", field.trim_matches('`')),
            None => format!("Invalid data: {reason}"),
        };
        FrameError::new(kind, message)
    })?;
    if kept_nul {
        return Err(FrameError::new(
            kind,
            "Text must not contain NUL characters",
        ));
    }
    Ok(parsed)
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

/// Serializes as `true`: the `success` of a frame that answers a request.
#[derive(Debug, Clone, Copy)]
pub struct Success;

impl Serialize for Success {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(true)
    }
}

/// Every frame the server sends, tagged by its `type`. Answers to a request carry
/// `success`; the events of a conversation do not.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// Answer to `ping`.
    Pong {
        /// Always true.
        success: Success,
        /// The server's time.
        data: PongOut,
    },
    /// Answer to `start_conversation`; older clients read `conversation_id` at the top.
    StartConversation {
        /// Always true.
        success: Success,
        /// The new conversation's public ID.
        conversation_id: String,
        /// The new conversation.
        data: StartedOut,
    },
    /// Answer to `send_message`: the stored exchange.
    SendMessage {
        /// Always true.
        success: Success,
        /// Both stored messages.
        data: ExchangeOut,
    },
    /// Answer to `regenerate`: the new reply with the message it answers.
    Regenerate {
        /// Always true.
        success: Success,
        /// The message answered and the new reply.
        data: ExchangeOut,
    },
    /// Answer to `edit_message`: the edited message and its reply.
    EditMessage {
        /// Always true.
        success: Success,
        /// Both stored messages.
        data: ExchangeOut,
    },
    /// Answer to `stop_generation`.
    StopGeneration {
        /// Always true.
        success: Success,
        /// Whether a reply was stopped.
        data: StoppedOut,
    },
    /// Answer to `end_conversation`.
    EndConversation {
        /// Always true.
        success: Success,
        /// The ended conversation.
        data: EndedOut,
    },
    /// Answer to `resume` when there is no reply to resume.
    Resume {
        /// Always true.
        success: Success,
        /// The conversation, not generating.
        data: NotGenerating,
    },
    /// A reply began.
    AiResponseStart {
        /// Which reply.
        data: ReplyRef<'a>,
    },
    /// A piece of the reply being generated.
    AiResponseChunk {
        /// The piece.
        data: ChunkOut<'a>,
    },
    /// The reply calls a tool.
    ToolCall {
        /// The call.
        data: ToolCallOut<'a>,
    },
    /// A tool the reply called answered (or failed).
    ToolResult {
        /// The result.
        data: ToolResultOut<'a>,
    },
    /// A reply stored on a conversation this connection follows.
    MessageBroadcast {
        /// Both stored messages.
        data: ExchangeOut,
    },
    /// The active leaf of a conversation this connection follows moved to another branch.
    BranchChanged {
        /// The conversation and its active leaf.
        data: BranchOut,
    },
    /// A conversation this connection follows was ended.
    ConversationEnded {
        /// The ended conversation.
        data: EndedOut,
    },
    /// A conversation this connection follows was given a new title.
    ConversationUpdated {
        /// The conversation and its title.
        data: UpdatedOut<'a>,
    },
    /// A request that failed, or a reply of this connection's that failed; its `type` is
    /// the request's.
    #[serde(untagged)]
    Failure(FailureOut<'a>),
    /// A turn refused by a usage limit; its `type` is the request's. The fields of the REST
    /// refusal (`detail`, `limit`, `retry_after`) beside those of every failure.
    #[serde(untagged)]
    Limited(LimitedOut<'a>),
}

impl ServerFrame<'_> {
    /// The frame's text.
    pub fn render(&self) -> String {
        serde_json::to_string(self).expect("frames serialize")
    }
}

/// The data of a `pong`.
#[derive(Debug, Serialize)]
pub struct PongOut {
    /// The server's time.
    pub timestamp: DateTime<Utc>,
}

/// The data of a `start_conversation` answer.
#[derive(Debug, Serialize)]
pub struct StartedOut {
    /// Public ID.
    pub conversation_id: String,
    /// Title.
    pub title: String,
    /// State.
    pub status: ConversationStatus,
    /// Model.
    pub model: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// The data of a `stop_generation` answer.
#[derive(Debug, Serialize)]
pub struct StoppedOut {
    /// Conversation's public ID.
    pub conversation_id: String,
    /// `false` when no reply was being generated.
    pub stopped: bool,
}

/// The data of a `resume` answer without a reply to resume.
#[derive(Debug, Serialize)]
pub struct NotGenerating {
    /// Conversation's public ID.
    pub conversation_id: String,
    /// Always false.
    pub generating: bool,
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

/// The data of a `conversation_updated` event.
#[derive(Debug, Serialize)]
pub struct UpdatedOut<'a> {
    /// Conversation's public ID.
    pub conversation_id: &'a str,
    /// Its title now.
    pub title: &'a str,
}

/// The data of a `branch_changed` event.
#[derive(Debug, Serialize)]
pub struct BranchOut {
    /// Conversation's public ID.
    pub conversation_id: String,
    /// Public ID of the active leaf now; `null` when no message is left.
    pub current_message_id: Option<String>,
}

/// Which reply an event is of.
#[derive(Debug, Serialize)]
pub struct ReplyRef<'a> {
    /// Conversation's public ID.
    pub conversation_id: &'a str,
    /// The reply's id.
    pub generation_id: &'a str,
}

/// A piece of a reply.
#[derive(Debug, Serialize)]
pub struct ChunkOut<'a> {
    /// Conversation's public ID.
    pub conversation_id: &'a str,
    /// The reply's id.
    pub generation_id: &'a str,
    /// Position within the reply, from 1.
    pub seq: u64,
    /// The text.
    pub delta: &'a str,
}

/// A tool call of a reply.
#[derive(Debug, Serialize)]
pub struct ToolCallOut<'a> {
    /// Conversation's public ID.
    pub conversation_id: &'a str,
    /// The reply's id.
    pub generation_id: &'a str,
    /// The tool.
    pub name: &'a str,
    /// Its arguments.
    pub arguments: &'a Value,
}

/// A tool's answer to a reply.
#[derive(Debug, Serialize)]
pub struct ToolResultOut<'a> {
    /// Conversation's public ID.
    pub conversation_id: &'a str,
    /// The reply's id.
    pub generation_id: &'a str,
    /// The tool.
    pub name: &'a str,
    /// Whether it answered.
    pub ok: bool,
}

/// A failure: `{"type": <request type>, "success": false, "error": ..., "data": {...}}`.
#[derive(Debug, Serialize)]
pub struct FailureOut<'a> {
    /// The request's type, or `error` when it has none.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Always false.
    pub success: bool,
    /// Why, in plain language.
    pub error: &'a str,
    /// What the failure is about, when known.
    #[serde(skip_serializing_if = "FailureData::is_empty")]
    pub data: FailureData,
}

/// A refusal by a usage limit: a failure with the REST refusal's fields.
#[derive(Debug, Serialize)]
pub struct LimitedOut<'a> {
    /// The request's type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Always false.
    pub success: bool,
    /// Why, in plain language.
    pub error: &'a str,
    /// The same sentence, as REST answers it.
    pub detail: &'a str,
    /// The limit reached: `messages_per_minute`, `tokens_per_day` or `tokens_per_month`.
    pub limit: &'a str,
    /// Seconds until the turn would be admitted.
    pub retry_after: u64,
    /// The conversation.
    pub data: FailureData,
}

/// What a failure is about: the conversation, the reply, and the part of the reply that
/// was stored.
#[derive(Debug, Default, Serialize)]
pub struct FailureData {
    /// Conversation's public ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// The reply's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    /// The stored partial reply's public ID; `null` when nothing was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Option<String>>,
}

impl FailureData {
    fn is_empty(&self) -> bool {
        self.conversation_id.is_none() && self.generation_id.is_none() && self.message_id.is_none()
    }
}

/// A failure frame.
pub fn failure(kind: &str, error: &str, data: FailureData) -> String {
    ServerFrame::Failure(FailureOut {
        kind,
        success: false,
        error,
        data,
    })
    .render()
}

/// The type of the answer to a turn of this kind.
fn answer_type(kind: TurnKind) -> &'static str {
    match kind {
        TurnKind::Send => "send_message",
        TurnKind::Regenerate => "regenerate",
        TurnKind::Edit => "edit_message",
    }
}

/// The frame of a live event for a connection; `mine` is the kind of turn the connection
/// asked for (or `send`, for a reply it resumed), which then ends with that request's
/// answer (a stored exchange says its own kind) instead of a broadcast; `None` for a
/// follower. `None` when the event means nothing to the connection.
pub fn live(ids: &IdCodec, event: &LiveEvent, mine: Option<TurnKind>) -> Option<String> {
    let conversation_id = ids.conversation.encode(event.conversation());
    let conversation_id = conversation_id.as_str();
    let frame = match event {
        LiveEvent::ReplyStarted { generation, .. } => ServerFrame::AiResponseStart {
            data: ReplyRef {
                conversation_id,
                generation_id: generation,
            },
        },
        LiveEvent::ReplyChunk {
            generation,
            seq,
            delta,
            ..
        } => ServerFrame::AiResponseChunk {
            data: ChunkOut {
                conversation_id,
                generation_id: generation,
                seq: *seq,
                delta,
            },
        },
        LiveEvent::ToolCall {
            generation,
            name,
            arguments,
            ..
        } => ServerFrame::ToolCall {
            data: ToolCallOut {
                conversation_id,
                generation_id: generation,
                name,
                arguments,
            },
        },
        LiveEvent::ToolResult {
            generation,
            name,
            ok,
            ..
        } => ServerFrame::ToolResult {
            data: ToolResultOut {
                conversation_id,
                generation_id: generation,
                name,
                ok: *ok,
            },
        },
        LiveEvent::ReplyDone { exchange, .. } if mine.is_some() => {
            let data = ExchangeOut::new(exchange, ids);
            match exchange.kind {
                TurnKind::Send => ServerFrame::SendMessage {
                    success: Success,
                    data,
                },
                TurnKind::Regenerate => ServerFrame::Regenerate {
                    success: Success,
                    data,
                },
                TurnKind::Edit => ServerFrame::EditMessage {
                    success: Success,
                    data,
                },
            }
        }
        LiveEvent::ReplyDone { exchange, .. } => ServerFrame::MessageBroadcast {
            data: ExchangeOut::new(exchange, ids),
        },
        LiveEvent::ReplyFailed {
            generation,
            error,
            partial,
            ..
        } => {
            // A partial reply that was stored is named, so the client can show it. Followers
            // get the failure too: it ends the reply whose chunks they were shown.
            let data = FailureData {
                conversation_id: Some(conversation_id.to_owned()),
                generation_id: Some(generation.to_string()),
                message_id: Some(
                    partial
                        .as_ref()
                        .map(|p| ids.message.encode(p.ai_message.id)),
                ),
            };
            let kind = match (mine, partial) {
                (None, _) => "error",
                (Some(_), Some(partial)) => answer_type(partial.kind),
                (Some(kind), None) => answer_type(kind),
            };
            return Some(failure(kind, error, data));
        }
        LiveEvent::Retitled { title, .. } => ServerFrame::ConversationUpdated {
            data: UpdatedOut {
                conversation_id,
                title,
            },
        },
        LiveEvent::BranchChanged { current, .. } => ServerFrame::BranchChanged {
            data: BranchOut {
                conversation_id: conversation_id.to_owned(),
                current_message_id: current.map(|id| ids.message.encode(id)),
            },
        },
        LiveEvent::Ended {
            status, ended_at, ..
        } => ServerFrame::ConversationEnded {
            data: EndedOut {
                conversation_id: conversation_id.to_owned(),
                status: *status,
                ended_at: *ended_at,
            },
        },
    };
    Some(frame.render())
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
