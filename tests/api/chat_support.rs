//! A server wired to the fake LLM, and a small WebSocket client.

use std::time::Duration;

use chat_service::config::Settings;
use chat_service::startup::build_services;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::fake_llm::FakeLlm;
use crate::helpers::Server;

/// The shared secret of test tokens.
pub const SECRET: &str = "chat-test-secret";

/// A running service talking to a fake LLM; derefs to its [`Server`] (address, state).
pub struct ChatApp {
    server: Server,
    /// The fake LLM.
    pub llm: FakeLlm,
    /// An HTTP client.
    pub http: reqwest::Client,
    _dir: TempDir,
}

impl std::ops::Deref for ChatApp {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

/// Starts the service on a fresh database, pointed at a fresh fake LLM.
pub async fn spawn_chat_app(configure: impl FnOnce(&mut Settings)) -> ChatApp {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        database_url: format!("sqlite://{}", dir.path().join("chat.db").display()),
        auth_secret_key: Some(chat_service::config::Secret::new(SECRET)),
        llm: llm.llm_settings(),
        ..Settings::default()
    };
    configure(&mut settings);
    let services = build_services(settings).await.unwrap();
    ChatApp {
        server: Server::start(services).await,
        llm,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl ChatApp {
    /// A token for `sub` with these roles.
    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        self.state
            .jwt
            .mint(sub, &roles, Duration::from_secs(3600), None)
    }

    /// `ws://` URL of a path.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws{}{path}", self.address.trim_start_matches("http"))
    }

    /// `http://` URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Opens a WebSocket; panics when refused.
    pub async fn connect(&self, path: &str) -> WsClient {
        let (socket, _) = tokio_tungstenite::connect_async(self.ws_url(path))
            .await
            .unwrap_or_else(|e| panic!("connect {path}: {e}"));
        WsClient { socket }
    }

    /// The HTTP status of a refused upgrade.
    pub async fn refused_status(&self, path: &str) -> u16 {
        match tokio_tungstenite::connect_async(self.ws_url(path)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("upgrade to {path} was accepted"),
        }
    }

    /// Creates a conversation through REST and returns its public ID.
    pub async fn create_conversation(&self, token: &str) -> String {
        let response = self
            .http
            .post(self.url("/api/v1/users/me/conversations"))
            .bearer_auth(token)
            .json(&json!({"title": "chat"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The stored messages of a conversation, through REST.
    pub async fn messages(&self, token: &str, conversation_id: &str) -> Vec<Value> {
        let response = self
            .http
            .get(self.url(&format!("/api/v1/conversations/{conversation_id}/messages")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Waits until no reply is being generated (bounded).
    pub async fn replies_settled(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.state.hub.generations_in_flight() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replies never settled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn shutdown(self) {
        self.server.stop().await;
    }
}

/// A WebSocket client speaking the JSON frame protocol.
pub struct WsClient {
    /// The socket.
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
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
            let message = tokio::time::timeout(Duration::from_secs(5), self.socket.next())
                .await
                .expect("no frame within 5 s")?;
            match message {
                Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The close frame's code, skipping other frames.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), self.socket.next())
                .await
                .expect("no close within 5 s")?;
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
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

    /// Collects `ai_response_chunk` deltas until the `send_message` answer.
    pub async fn collect_reply(&mut self) -> (Vec<String>, Value) {
        let mut chunks = Vec::new();
        loop {
            let frame = self.next().await;
            match frame["type"].as_str() {
                Some("ai_response_chunk") => {
                    chunks.push(frame["data"]["delta"].as_str().unwrap().to_owned())
                }
                Some("send_message") => return (chunks, frame),
                _ => panic!("unexpected frame while waiting for a reply: {frame}"),
            }
        }
    }
}
