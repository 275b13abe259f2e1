//! Live-chat load tools for `BENCHMARKS.md` (driven by `scripts/bench-live.sh`): the same
//! measurements against one instance and against several behind one Redis.
//!
//! - `roundtrip --addrs A,B`: connections spread over the instances, each its own user and
//!   conversation, sending messages back to back (the echo LLM answers at once).
//! - `fanout --addrs A,B`: one conversation, a sender on the first instance and a watcher on
//!   the last; the time from sending to the watcher's `message_broadcast`, beside the time
//!   to the sender's own answer.
//! - `resume --addrs A,B`: a reply finished on the first instance, resumed by a new
//!   connection on the last; the time from `resume` to the replayed answer.

use std::time::{Duration, Instant};

use chat_service::jwt::JwtKeys;
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Parser)]
struct Cli {
    /// Comma-separated service addresses, e.g. 127.0.0.1:8000,127.0.0.1:8001.
    #[arg(long)]
    addrs: String,
    /// The services' AUTH_SECRET_KEY, to mint tokens.
    #[arg(long)]
    secret: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// send_message round trips over many connections.
    Roundtrip {
        #[arg(long, default_value_t = 200)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Broadcast latency from the first instance to the last.
    Fanout {
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
    /// Resume latency on the last instance of replies finished on the first.
    Resume {
        #[arg(long, default_value_t = 300)]
        samples: usize,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let addrs: Vec<String> = cli.addrs.split(',').map(str::to_owned).collect();
    let keys = JwtKeys::new(&cli.secret, None, None);
    match cli.command {
        Command::Roundtrip {
            connections,
            seconds,
        } => roundtrip(&addrs, &keys, connections, seconds).await,
        Command::Fanout { samples } => fanout(&addrs, &keys, samples).await,
        Command::Resume { samples } => resume(&addrs, &keys, samples).await,
    }
}

async fn connect(addr: &str, keys: &JwtKeys, user: &str) -> Socket {
    let token = keys.mint(user, &["user".to_owned()], Duration::from_secs(3600), None);
    let url = format!("ws://{addr}/ws/chat/{user}?token={token}");
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::text(frame.to_string()))
        .await
        .expect("send");
}

/// The next frame of one of these types.
async fn next_of(socket: &mut Socket, types: &[&str]) -> Value {
    loop {
        if let Message::Text(text) = socket.next().await.expect("open").expect("frame") {
            let frame: Value = serde_json::from_str(&text).expect("json");
            if types.iter().any(|t| frame["type"] == *t) {
                return frame;
            }
        }
    }
}

async fn start_conversation(socket: &mut Socket) -> String {
    send(
        socket,
        json!({"type": "start_conversation", "data": {"title": "bench"}}),
    )
    .await;
    let answer = next_of(socket, &["start_conversation"]).await;
    answer["data"]["conversation_id"]
        .as_str()
        .expect("conversation id")
        .to_owned()
}

async fn say(socket: &mut Socket, conversation: &str) {
    send(
        socket,
        json!({"type": "send_message", "data": {"conversation_id": conversation, "content": "hi"}}),
    )
    .await;
}

fn summary(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: f64| {
        let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    format!(
        "{name}: {} samples, p50 {:.2} ms, p99 {:.2} ms",
        samples.len(),
        at(0.5),
        at(0.99)
    )
}

async fn roundtrip(addrs: &[String], keys: &JwtKeys, connections: usize, seconds: u64) {
    let mut sockets = Vec::with_capacity(connections);
    for i in 0..connections {
        let addr = &addrs[i % addrs.len()];
        sockets.push(connect(addr, keys, &format!("live-{i}")).await);
    }
    // The load starts once every connection is open.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for mut socket in sockets {
        tasks.push(tokio::spawn(async move {
            let conversation = start_conversation(&mut socket).await;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                say(&mut socket, &conversation).await;
                let answer = next_of(&mut socket, &["send_message"]).await;
                assert_eq!(answer["success"], true, "{answer}");
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("connection task"));
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "roundtrip over {} instance(s), {connections} connections: {rate:.0}/s; {}",
        addrs.len(),
        summary("latency", all)
    );
}

async fn fanout(addrs: &[String], keys: &JwtKeys, samples: usize) {
    let mut sender = connect(&addrs[0], keys, "fan").await;
    let conversation = start_conversation(&mut sender).await;
    let token = keys.mint("fan", &["user".to_owned()], Duration::from_secs(3600), None);
    let last = addrs.last().expect("an address");
    let url = format!("ws://{last}/ws/{conversation}?token={token}");
    let mut watcher = tokio_tungstenite::connect_async(url)
        .await
        .expect("watch")
        .0;
    send(&mut watcher, json!({"type": "ping"})).await;
    next_of(&mut watcher, &["pong"]).await;
    let (mut broadcast, mut answer) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let started = Instant::now();
        say(&mut sender, &conversation).await;
        let (own, seen) = tokio::join!(
            async {
                next_of(&mut sender, &["send_message"]).await;
                started.elapsed()
            },
            async {
                next_of(&mut watcher, &["message_broadcast"]).await;
                started.elapsed()
            }
        );
        answer.push(own);
        broadcast.push(seen);
    }
    println!(
        "fanout {} -> {last}: {}; {}",
        addrs[0],
        summary("sender's answer", answer),
        summary("watcher's broadcast", broadcast)
    );
}

async fn resume(addrs: &[String], keys: &JwtKeys, samples: usize) {
    let mut sender = connect(&addrs[0], keys, "resumer").await;
    let last = addrs.last().expect("an address");
    let mut latencies = Vec::new();
    for _ in 0..samples {
        let conversation = start_conversation(&mut sender).await;
        say(&mut sender, &conversation).await;
        next_of(&mut sender, &["send_message"]).await;
        let mut other = connect(last, keys, "resumer").await;
        let started = Instant::now();
        send(
            &mut other,
            json!({"type": "resume", "data": {"conversation_id": conversation, "after_seq": 0}}),
        )
        .await;
        let answer = next_of(&mut other, &["send_message", "resume"]).await;
        assert_eq!(answer["type"], "send_message", "{answer}");
        latencies.push(started.elapsed());
    }
    println!(
        "resume on {last} of replies finished on {}: {}",
        addrs[0],
        summary("latency", latencies)
    );
}
