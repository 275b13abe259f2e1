//! A WebSocket client speaking the service's JSON frame protocol.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for one frame.
const FRAME_PATIENCE: Duration = Duration::from_secs(5);

/// A WebSocket client speaking the JSON frame protocol.
pub struct WsClient {
    /// The socket.
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Opens a WebSocket on `path` (with its query) of the server at `address`
    /// (`http://host:port`); panics when refused.
    pub async fn open(address: &str, path: &str) -> Self {
        let url = format!("ws{}{path}", address.trim_start_matches("http"));
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {path}: {e}"));
        Self { socket }
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .unwrap();
    }

    /// The next JSON frame (pings skipped), within five seconds.
    pub async fn next(&mut self) -> Value {
        self.try_next()
            .await
            .expect("the connection closed instead of sending a frame")
    }

    /// The next JSON frame, or `None` when the connection closes.
    pub async fn try_next(&mut self) -> Option<Value> {
        loop {
            match self.message("frame").await? {
                Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The close frame's code, skipping other frames.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.message("close").await? {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The close frame's code and reason, skipping other frames.
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            match self.message("close").await? {
                Ok(Message::Close(frame)) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next message of any kind without a time limit of its own, `None` at the end.
    pub async fn next_message(&mut self) -> Option<Result<Message, Error>> {
        self.socket.next().await
    }

    /// The next message of any kind, `None` once the stream has ended; panics naming
    /// `awaited` when none comes in time.
    async fn message(&mut self, awaited: &str) -> Option<Result<Message, Error>> {
        tokio::time::timeout(FRAME_PATIENCE, self.socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {awaited} within {FRAME_PATIENCE:?}"))
    }

    /// Starts a conversation and returns its public ID.
    pub async fn start(&mut self) -> String {
        self.send(json!({"type": "start_conversation", "data": {"title": "ws"}}))
            .await;
        let answer = self.next().await;
        assert_eq!(answer["success"], true, "{answer}");
        answer["data"]["conversation_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Sends a message and collects the chunks and the final answer.
    pub async fn chat(&mut self, conversation_id: &str, content: &str) -> (Vec<String>, Value) {
        self.send(json!({"type": "send_message",
            "data": {"conversation_id": conversation_id, "content": content}}))
            .await;
        self.collect_reply().await
    }

    /// Collects `ai_response_chunk` deltas until the `send_message` answer, checking that
    /// chunks carry the reply's id from `ai_response_start` and count up from 1.
    pub async fn collect_reply(&mut self) -> (Vec<String>, Value) {
        self.collect_until("send_message").await
    }

    /// Collects a reply that another connection asked for, until its `message_broadcast`.
    pub async fn collect_broadcast(&mut self) -> (Vec<String>, Value) {
        self.collect_until("message_broadcast").await
    }

    /// Collects chunk deltas until a frame of type `end`.
    pub async fn collect_until(&mut self, end: &str) -> (Vec<String>, Value) {
        let mut chunks = Vec::new();
        let mut generation = None;
        let mut seq: Option<u64> = None;
        loop {
            let frame = self.next().await;
            match frame["type"].as_str() {
                Some("ai_response_start") => {
                    generation = Some(frame["data"]["generation_id"].clone());
                    seq = Some(0);
                }
                Some("ai_response_chunk") => {
                    self.check_chunk(&frame, &mut generation, &mut seq);
                    chunks.push(frame["data"]["delta"].as_str().unwrap().to_owned())
                }
                Some(kind) if kind == end => return (chunks, frame),
                _ => panic!("unexpected frame while waiting for {end}: {frame}"),
            }
        }
    }

    /// Skips the reply's `ai_response_start` and returns the frame after it.
    pub async fn next_after_start(&mut self) -> Value {
        let frame = self.next().await;
        if frame["type"] == "ai_response_start" {
            assert!(frame["data"]["generation_id"].is_string(), "{frame}");
            return self.next().await;
        }
        frame
    }

    /// Checks a chunk against the reply's id and the chunks collected before it (when the
    /// caller consumed the start and first chunks itself, it checks from there on).
    fn check_chunk(&self, frame: &Value, generation: &mut Option<Value>, seq: &mut Option<u64>) {
        let id = generation.get_or_insert_with(|| frame["data"]["generation_id"].clone());
        assert_eq!(&frame["data"]["generation_id"], id, "{frame}");
        let this = frame["data"]["seq"].as_u64().expect("a seq");
        if let Some(previous) = seq {
            assert_eq!(this, *previous + 1, "{frame}");
        }
        *seq = Some(this);
    }
}
