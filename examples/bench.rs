//! Load tools for `BENCHMARKS.md` (driven by `scripts/bench.sh`).
//!
//! - `llm-server [--first-token-ms N]`: an OpenAI-compatible server (the tests' fake) on a free
//!   port, instant or with a delay before its first token.
//! - `bare-server`: a bare axum "hello" server, the ceiling of this machine for comparison.
//! - `analytics-server --mode ok|ok-nagle|stall`: an analytics receiver that answers at
//!   once, or that accepts connections and never answers.
//! - `roundtrip`: N connections, each its own user, sending messages back to back.
//! - `first-chunk`: the time to the first chunk through the service versus straight from the
//!   LLM server sent the same messages, sampled in turn.
//! - `conversations`: N conversations over 500 users, created through the service and listed
//!   in a file, for `idle` to use on a service started afterwards on the same database.
//! - `idle`: N authenticated idle connections, each bound to a conversation of its own, and
//!   the service's resident memory.
//! - `limits`: the cost of a turn's usage checks (`usage::admit`) and of recording its call
//!   (`usage::record`), with limits off, on local counters and on Redis, in one run.

#[path = "../tests/api/fake_llm.rs"]
mod fake_llm;

use std::time::{Duration, Instant};

use chat_service::jwt::JwtKeys;
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an OpenAI-compatible server and print its base URL.
    LlmServer {
        /// Wait this long before the first (and only) content chunk, as a real model takes
        /// time to its first token; 0 answers at once, in one chunk per word.
        #[arg(long, default_value_t = 0)]
        first_token_ms: u64,
    },
    /// Run an analytics receiver and print its base URL.
    AnalyticsServer {
        /// `ok` answers 200 at once (with TCP_NODELAY, as uvicorn does); `ok-nagle` the same
        /// with Nagle's algorithm left on (axum's default); `stall` accepts connections and
        /// never answers.
        #[arg(long, default_value = "ok")]
        mode: String,
    },
    /// Run a bare axum server answering `GET /` with a constant, for the machine's ceiling.
    BareServer,
    /// Measure send_message round trips.
    Roundtrip {
        /// Service address, e.g. 127.0.0.1:8000.
        #[arg(long)]
        addr: String,
        /// The service's AUTH_SECRET_KEY, to mint a token per connection.
        #[arg(long)]
        secret: String,
        #[arg(long, default_value_t = 200)]
        connections: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Compare the time to the first chunk through the service with the LLM server's own.
    FirstChunk {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        secret: String,
        /// The LLM server's base URL, e.g. http://127.0.0.1:9100/v1.
        #[arg(long)]
        llm: String,
        #[arg(long, default_value_t = 300)]
        samples: usize,
    },
    /// Create conversations for `idle` and list them in a file (`user conversation_id`).
    Conversations {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        secret: String,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Where to list them.
        #[arg(long)]
        out: std::path::PathBuf,
        /// The service's process id, to report its resident memory once they exist.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Hold idle authenticated connections and report the service's resident memory.
    Idle {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        secret: String,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// The service's process id, to read its resident memory.
        #[arg(long)]
        pid: u32,
        /// Conversations listed by `conversations` (on a service since restarted); without
        /// it, the conversations are created first, through the same service.
        #[arg(long)]
        conversations: Option<std::path::PathBuf>,
    },
    /// Time the usage checks and the recording of a turn, in this process, on a fresh SQLite
    /// database: limits off, local counters, and Redis when `--redis` is given.
    Limits {
        /// A Redis for the third series (keys under a prefix of the run's own).
        #[arg(long)]
        redis: Option<String>,
        /// Turns per series.
        #[arg(long, default_value_t = 2000)]
        turns: usize,
    },
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::LlmServer { first_token_ms } => {
            let server = fake_llm::FakeLlm::start().await;
            server.forget_requests();
            if first_token_ms > 0 {
                server.set_fallback(fake_llm::Behaviour::Reply {
                    pieces: vec!["Hello from the fake LLM".to_owned()],
                    delay: Duration::from_millis(first_token_ms),
                });
            }
            println!("{}", server.base_url);
            // Serve until killed.
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                let _ = &server;
            }
        }
        Command::AnalyticsServer { mode } => analytics_server(&mode).await,
        Command::BareServer => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            println!("http://{}", listener.local_addr().expect("address"));
            let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
            axum::serve(listener, app).await.expect("serve");
        }
        Command::Roundtrip {
            addr,
            secret,
            connections,
            seconds,
        } => roundtrip(&addr, &secret, connections, seconds).await,
        Command::FirstChunk {
            addr,
            secret,
            llm,
            samples,
        } => first_chunk(&addr, &secret, &llm, samples).await,
        Command::Conversations {
            addr,
            secret,
            count,
            out,
            pid,
        } => {
            let keys = JwtKeys::new(&secret, None, None);
            let conversations = create_conversations(&addr, &keys, count).await;
            let list: String = conversations
                .iter()
                .map(|(user, conversation)| format!("{user} {conversation}\n"))
                .collect();
            std::fs::write(&out, list).expect("the list is written");
            if let Some(pid) = pid {
                tokio::time::sleep(Duration::from_secs(1)).await;
                println!(
                    "conversations: {count} created; service resident memory {}",
                    Resident::of(pid)
                );
            }
        }
        Command::Idle {
            addr,
            secret,
            connections,
            pid,
            conversations,
        } => idle(&addr, &secret, connections, pid, conversations.as_deref()).await,
        Command::Limits { redis, turns } => limits(redis.as_deref(), turns).await,
    }
}

/// One series of `limits`: the state of a service with these limits.
async fn limits_state(
    database: &std::path::Path,
    limited: bool,
    redis: Option<&str>,
) -> chat_service::state::AppState {
    use chat_service::config::{Secret, Settings};
    let env = std::collections::HashMap::from([
        (
            "DATABASE_URL".to_owned(),
            format!("sqlite://{}", database.display()),
        ),
        ("AUTH_SECRET_KEY".to_owned(), "bench".to_owned()),
    ]);
    let mut settings = Settings::from_map(&env).expect("settings");
    // Limits high enough never to refuse, so every check does all its work.
    settings.usage.messages_per_minute = if limited { 1_000_000 } else { 0 };
    if limited {
        settings.usage.daily = Some(u64::MAX / 4);
        settings.usage.monthly = Some(u64::MAX / 4);
    }
    if let Some(url) = redis {
        settings.live.redis_url = Some(Secret::new(url));
        settings.live.redis_prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    }
    let services = chat_service::startup::build_services(settings)
        .await
        .expect("the service builds");
    chat_service::state::AppState::new(services)
}

/// Times `usage::admit` and `usage::record` per turn with limits off, local and on Redis.
async fn limits(redis: Option<&str>, turns: usize) {
    use chat_service::chat::llm::Usage;
    use chat_service::db::NewUser;
    use chat_service::service::usage::{self, Account, CallKind, LlmCall, Role};
    let mut series = vec![("off", false, None), ("local", true, None)];
    if let Some(url) = redis {
        series.push(("redis", true, Some(url)));
    }
    println!("series  turns  admit p50 us  admit p99 us  admit mean us  record mean us");
    for (name, limited, redis) in series {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let state = limits_state(&folder.path().join("bench.db"), limited, redis).await;
        let user = state
            .store
            .create_user(&NewUser {
                username: "bench".to_owned(),
                email: None,
                full_name: None,
            })
            .await
            .expect("a user");
        let account = Account::User {
            id: user.id,
            role: Role::User,
        };
        let call = LlmCall {
            model: "bench-model".to_owned(),
            kind: CallKind::Reply,
            usage: Usage {
                prompt_tokens: 100,
                completion_tokens: 50,
                total_tokens: 150,
                estimated: false,
            },
        };
        let (mut admits, mut recorded) = (Vec::with_capacity(turns), Duration::ZERO);
        for _ in 0..turns {
            let started = Instant::now();
            usage::admit(&state, account).await.expect("admitted");
            admits.push(started.elapsed());
            let started = Instant::now();
            usage::record(&state, Some(user.id), Some(1), std::slice::from_ref(&call)).await;
            recorded += started.elapsed();
        }
        admits.sort();
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let mean = admits.iter().sum::<Duration>() / u32::try_from(turns).unwrap_or(1);
        println!(
            "{name:<6}  {turns:>5}  {:>12.0}  {:>12.0}  {:>13.0}  {:>14.0}",
            micros(admits[turns / 2]),
            micros(admits[turns * 99 / 100]),
            micros(mean),
            micros(recorded / u32::try_from(turns).unwrap_or(1)),
        );
    }
}

async fn connect(addr: &str, keys: &JwtKeys, user: &str) -> Socket {
    let token = keys.mint(user, &["user".to_owned()], Duration::from_secs(3600), None);
    let url = format!("ws://{addr}/ws/chat/{user}?token={token}");
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    socket
}

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        match socket.next().await.expect("open").expect("frame") {
            Message::Text(text) => return serde_json::from_str(&text).expect("json"),
            _ => continue,
        }
    }
}

async fn start_conversation(socket: &mut Socket) -> String {
    send(
        socket,
        json!({"type": "start_conversation", "data": {"title": "bench"}}),
    )
    .await;
    let answer = next_json(socket).await;
    answer["data"]["conversation_id"]
        .as_str()
        .expect("conversation id")
        .to_owned()
}

async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::text(frame.to_string()))
        .await
        .expect("send");
}

/// Sends a message and waits for its answer; returns the time to the first chunk and to
/// the answer.
async fn exchange(socket: &mut Socket, conversation: &str) -> (Duration, Duration) {
    let started = Instant::now();
    send(
        socket,
        json!({"type": "send_message", "data": {"conversation_id": conversation, "content": "hi"}}),
    )
    .await;
    let mut first = None;
    loop {
        let frame = next_json(socket).await;
        match frame["type"].as_str() {
            Some("ai_response_chunk") => {
                first.get_or_insert_with(|| started.elapsed());
            }
            Some("send_message") => {
                assert_eq!(frame["success"], true, "{frame}");
                let total = started.elapsed();
                return (first.unwrap_or(total), total);
            }
            _ => {}
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn roundtrip(addr: &str, secret: &str, connections: usize, seconds: u64) {
    let keys = std::sync::Arc::new(JwtKeys::new(secret, None, None));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..connections {
        let keys = keys.clone();
        let addr = addr.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut socket = connect(&addr, &keys, &format!("bench-{i}")).await;
            let conversation = start_conversation(&mut socket).await;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                latencies.push(exchange(&mut socket, &conversation).await.1);
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("connection task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    println!(
        "roundtrip: {connections} connections, {} exchanges in {elapsed:.1} s: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        all.len(),
        all.len() as f64 / elapsed,
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
    );
}

/// Messages of history a turn sends at most (the service's window).
const HISTORY_WINDOW: usize = 200;

/// The time to the first content chunk of a streamed request straight to the LLM server.
async fn direct_first_chunk(http: &reqwest::Client, llm: &str, messages: &[Value]) -> Duration {
    let started = Instant::now();
    let mut response = http
        .post(format!("{llm}/chat/completions"))
        .json(&json!({"model": "fake-model", "stream": true, "messages": messages}))
        .send()
        .await
        .expect("llm");
    let mut first = None;
    let mut body = String::new();
    while let Some(bytes) = response.chunk().await.expect("llm body") {
        body.push_str(&String::from_utf8_lossy(&bytes));
        if first.is_none() && has_content(&body) {
            first = Some(started.elapsed());
        }
    }
    first.expect("a content chunk")
}

/// Samples, in turn, the first chunk straight from the LLM server, sent the same messages the
/// service sends it (the conversation so far and the new one), and through the service.
async fn first_chunk(addr: &str, secret: &str, llm: &str, samples: usize) {
    let http = reqwest::Client::new();
    let keys = JwtKeys::new(secret, None, None);
    let mut socket = connect(addr, &keys, "bench-first-chunk").await;
    let conversation = start_conversation(&mut socket).await;
    let mut history: Vec<Value> = Vec::new();
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let kept = history.len().saturating_sub(HISTORY_WINDOW);
        let mut messages = history[kept..].to_vec();
        messages.push(json!({"role": "user", "content": "hi"}));
        direct.push(direct_first_chunk(&http, llm, &messages).await);
        through.push(exchange(&mut socket, &conversation).await.0);
        history.push(json!({"role": "user", "content": "hi"}));
        history.push(json!({"role": "assistant", "content": "Hello from the fake LLM"}));
    }
    direct.sort();
    through.sort();
    let (d50, t50) = (percentile(&direct, 0.5), percentile(&through, 0.5));
    println!(
        "first chunk: LLM server p50 {:.2} ms p99 {:.2} ms; through the service p50 {:.2} ms p99 {:.2} ms; added p50 {:.2} ms",
        ms(d50),
        ms(percentile(&direct, 0.99)),
        ms(t50),
        ms(percentile(&through, 0.99)),
        ms(t50.saturating_sub(d50)),
    );
}

/// Whether a streamed body so far holds a complete event with a non-empty content delta (the
/// first event only gives the role).
fn has_content(body: &str) -> bool {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .any(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|content| !content.is_empty())
        })
}

/// A process's resident memory, from `/proc/PID/status`, in KiB: in all, and its anonymous
/// (heap, stacks) and file-backed (the binary, the SQLite file mapped by the readers) parts.
struct Resident {
    total: u64,
    anon: u64,
    file: u64,
}

impl Resident {
    fn of(pid: u32) -> Self {
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in the process status"))
        };
        Self {
            total: field("VmRSS:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
        }
    }
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        write!(
            f,
            "{:.1} MiB (anonymous {:.1}, file {:.1})",
            mib(self.total),
            mib(self.anon),
            mib(self.file)
        )
    }
}

/// `count` conversations, each `(user, public id)`, over a few hundred users so that
/// provisioning is paid once per user.
async fn create_conversations(addr: &str, keys: &JwtKeys, count: usize) -> Vec<(usize, String)> {
    const USERS: usize = 500;
    let mut conversations = Vec::with_capacity(count);
    for user in 0..USERS.min(count) {
        let mut creator = connect(addr, keys, &format!("idle-{user}")).await;
        for _ in (user..count).step_by(USERS) {
            conversations.push((user, start_conversation(&mut creator).await));
        }
    }
    conversations
}

async fn idle(
    addr: &str,
    secret: &str,
    connections: usize,
    pid: u32,
    listed: Option<&std::path::Path>,
) {
    let keys = JwtKeys::new(secret, None, None);
    // Each connection is bound to a conversation of its own (`/ws/{conversation_id}`), as a
    // user's chat page opens it.
    let conversations = match listed {
        Some(path) => std::fs::read_to_string(path)
            .expect("the list of conversations")
            .lines()
            .take(connections)
            .map(|line| {
                let (user, conversation) = line.split_once(' ').expect("user conversation");
                (
                    user.parse().expect("a user number"),
                    conversation.to_owned(),
                )
            })
            .collect(),
        None => create_conversations(addr, &keys, connections).await,
    };
    assert_eq!(conversations.len(), connections, "one conversation each");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = Resident::of(pid);
    let mut sockets = Vec::with_capacity(connections);
    for (user, conversation) in &conversations {
        let user = format!("idle-{user}");
        let token = keys.mint(&user, &["user".to_owned()], Duration::from_secs(3600), None);
        let url = format!("ws://{addr}/ws/{conversation}?token={token}");
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = Resident::of(pid);
    println!(
        "idle: {connections} authenticated connections open, each bound to a conversation; service resident memory {before} before, {after} with them ({:.2} KiB per connection)",
        (after.total.saturating_sub(before.total)) as f64 / connections as f64,
    );
    // A last check that they are alive.
    let mut alive = 0;
    for socket in sockets.iter_mut().step_by(connections.max(10) / 10) {
        send(socket, json!({"type": "ping"})).await;
        if next_json(socket).await["type"] == "pong" {
            alive += 1;
        }
    }
    println!("idle: {alive} of the sampled connections answered a ping");
}

async fn analytics_server(mode: &str) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("http://{}", listener.local_addr().expect("address"));
    if mode == "stall" {
        // Hold every connection open without reading or answering.
        let mut held = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.expect("accept");
            held.push(socket);
        }
    }
    // Like a real receiver: parses each event.
    let app = axum::Router::new().fallback(|body: axum::body::Bytes| async move {
        let _ = std::hint::black_box(serde_json::from_slice::<serde_json::Value>(&body));
        axum::http::StatusCode::OK
    });
    let nodelay = mode != "ok-nagle";
    let listener = axum::serve::ListenerExt::tap_io(listener, move |stream| {
        let _ = stream.set_nodelay(nodelay);
    });
    axum::serve(listener, app).await.expect("serve");
}
