//! A fake analytics service: a real HTTP server on `127.0.0.1:0` that records every request
//! and answers as the test says, and a bare-TCP one that hangs up after each answer.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONNECTION;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::helpers::PATIENCE;

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 at once.
    Accept,
    /// 500 at once.
    Fail,
    /// Accepts the connection and the request, never answers.
    Stall,
    /// Answers 200 once the gate opens.
    Gated(watch::Receiver<bool>),
    /// 200 with `Connection: close`: one request per connection.
    CloseEach,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// JSON body, `Null` when empty.
    pub body: Value,
    /// `Authorization` header.
    pub authorization: Option<String>,
}

#[derive(Clone)]
struct ReceiverState {
    log: Arc<watch::Sender<Vec<Received>>>,
    behaviour: Behaviour,
}

/// A local analytics service that records every request; clones share it.
#[derive(Clone)]
pub struct Receiver {
    /// Its base URL.
    pub url: String,
    log: Arc<watch::Sender<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
}

impl Receiver {
    /// Starts a receiver on a free port.
    pub async fn start(behaviour: Behaviour) -> Self {
        let log = Arc::new(watch::channel(Vec::new()).0);
        let state = ReceiverState {
            log: log.clone(),
            behaviour,
        };
        let app = Router::new().fallback(record).with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let listener = listener.tap_io(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        tokio::spawn(axum::serve(listener, app).into_future());
        Self {
            url,
            log,
            connections,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.borrow().clone()
    }

    /// Waits until what was received satisfies `done`, and returns it.
    pub async fn wait_for(&self, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let mut log = self.log.subscribe();
        let result = tokio::time::timeout(PATIENCE, log.wait_for(|r| done(r))).await;
        match result {
            Ok(Ok(received)) => received.clone(),
            _ => panic!(
                "the receiver never got what was expected: {:#?}",
                self.received()
            ),
        }
    }

    /// Waits for a request to `path` whose body satisfies `matches`, and returns it.
    pub async fn wait_for_event(&self, path: &str, matches: impl Fn(&Value) -> bool) -> Received {
        let found = |r: &Received| r.path == path && matches(&r.body);
        let received = self.wait_for(|all| all.iter().any(found)).await;
        received.into_iter().find(found).expect("found")
    }
}

async fn record(
    State(state): State<ReceiverState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Received {
        method,
        path: uri.path().to_owned(),
        query: uri
            .query()
            .map(|q| {
                url_pairs(q)
                    .into_iter()
                    .collect::<BTreeMap<String, String>>()
            })
            .unwrap_or_default(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    state.log.send_modify(|log| log.push(received));
    match state.behaviour {
        Behaviour::Accept => StatusCode::OK.into_response(),
        Behaviour::Fail => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Behaviour::Stall => std::future::pending().await,
        Behaviour::Gated(mut gate) => {
            let _ = gate.wait_for(|open| *open).await;
            StatusCode::OK.into_response()
        }
        Behaviour::CloseEach => ([(CONNECTION, "close")], StatusCode::OK).into_response(),
    }
}

/// A bare-TCP analytics service that answers the first request of each connection with a
/// chunked body and then hangs up, whatever else the connection carried. Counts the
/// requests it answered.
pub struct HangUpReceiver {
    /// Its base URL.
    pub url: String,
    answered: Arc<AtomicUsize>,
}

impl HangUpReceiver {
    /// Starts it on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let answered = Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(answer_one_and_hang_up(socket, count.clone()));
            }
        });
        Self { url, answered }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

async fn answer_one_and_hang_up(mut socket: tokio::net::TcpStream, answered: Arc<AtomicUsize>) {
    let mut buffer = Vec::new();
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                break;
            }
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    if socket.write_all(answer).await.is_err() {
        return;
    }
    answered.fetch_add(1, Ordering::Relaxed);
    // Half-close, then read until the client closes: closing with unread requests would
    // reset the connection and could destroy the answer before the client reads it.
    let _ = socket.shutdown().await;
    let mut sink = [0u8; 4096];
    while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Decodes `a=b&c=d` with percent escapes.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .expect("query")
        .query_pairs()
        .into_owned()
        .collect()
}
