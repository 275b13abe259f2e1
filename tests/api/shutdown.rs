//! An instance stopped with SIGTERM while it generates replies, beside another instance of the
//! same deployment (one PostgreSQL database, one Redis): what is stored, what a client that
//! resumed on the other instance gets, and whether the conversation is free again at once.
//! The stopped instance is the service binary run as a child process, so that whatever it
//! has not done when it exits stays undone.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::fake_llm::{Behaviour, FakeLlm, FAKE_MODEL};
use crate::helpers::*;
use crate::live::{redis_url, resume, send_and_read_chunks, slow_reply, unique_prefix};
use crate::service_process::ServiceProcess;
use crate::test_database::TestDatabase;
use crate::ws_client::WsClient;

/// Instance B, in the test process, on a fresh PostgreSQL database and Redis under a prefix
/// of its own; `None` when PostgreSQL tests are skipped.
async fn instance_b(prefix: &str) -> Option<TestApp> {
    let database = TestDatabase::postgres().await?;
    Some(
        spawn_app_with(
            TestOptions::new()
                .database(database)
                .fake_llm()
                .redis(&redis_url(), prefix),
        )
        .await,
    )
}

/// Instance A: the binary on B's database, with Redis at `redis` under `prefix`, replies
/// from `llm`, and `extra` settings.
async fn instance_a(
    b: &TestApp,
    llm: &FakeLlm,
    redis: &str,
    prefix: &str,
    extra: &[(&str, &str)],
) -> ServiceProcess {
    let database = b.database_url();
    let mut env = vec![
        ("DATABASE_URL", database.as_str()),
        ("REDIS_URL", redis),
        ("REDIS_PREFIX", prefix),
        ("LLM_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", llm.base_url.as_str()),
        ("OPENAI_API_KEY", "test-key"),
        ("OPENAI_MODEL", FAKE_MODEL),
    ];
    env.extend_from_slice(extra);
    ServiceProcess::start(&env).await
}

/// Reads a resumed reply's chunks until its end (the `send_message` answer); returns the
/// deltas and the answer. The chunks must follow each other from `after_seq + 1`.
async fn follow_to_the_end(ws: &mut WsClient, after_seq: u64) -> (Vec<String>, Value) {
    let mut deltas = Vec::new();
    loop {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("ai_response_start") => {}
            Some("ai_response_chunk") => {
                let expected = after_seq + deltas.len() as u64 + 1;
                assert_eq!(
                    frame["data"]["seq"], expected,
                    "no gap, no duplicate: {frame}"
                );
                deltas.push(frame["data"]["delta"].as_str().unwrap().to_owned());
            }
            Some("send_message") => return (deltas, frame),
            _ => panic!("unexpected frame while following a reply: {frame}"),
        }
    }
}

#[tokio::test]
async fn sigterm_mid_reply_stores_it_partial_ends_it_for_resumers_and_frees_the_conversation() {
    let prefix = unique_prefix();
    let Some(b) = instance_b(&prefix).await else {
        return;
    };
    let llm = FakeLlm::start().await;
    // Forty seconds of reply: far longer than the shutdown timeout.
    let (text, endless) = slow_reply(2000, Duration::from_millis(20));
    llm.script(endless);
    let a = instance_a(
        &b,
        &llm,
        &redis_url(),
        &prefix,
        &[("SHUTDOWN_TIMEOUT_SECONDS", "2")],
    )
    .await;
    let token = b.token("ivy", USER);
    let conversation = b.new_conversation(&token).await;
    let mut on_a = a.connect(&format!("/ws/chat/ivy?token={token}")).await;
    let had = send_and_read_chunks(&mut on_a, &conversation, 3).await;

    // A client that dropped from A resumes on B and follows the reply live from there.
    let mut on_b = b.connect(&format!("/ws/chat/ivy?token={token}")).await;
    on_b.send(json!({"type": "resume", "data": {"conversation_id": conversation, "after_seq": 3}}))
        .await;
    assert_eq!(on_b.next().await["type"], "ai_response_start");

    let exit = a.terminate().await;
    assert!(exit.success(), "A exits cleanly: {exit}");

    // Once A has exited, the reply is stored as far as it got, marked incomplete.
    let messages = b.messages(&token, &conversation).await;
    let stored = messages.last().expect("messages");
    assert_eq!(stored["role"], "assistant", "the reply is stored: {stored}");
    let metadata = &stored["message_metadata"];
    assert_eq!(metadata["incomplete"], true, "{stored}");
    assert_eq!(metadata["stopped"], false, "{stored}");
    assert!(
        metadata["error"]
            .as_str()
            .unwrap()
            .contains("service restarted"),
        "{stored}"
    );
    let content = stored["content"].as_str().unwrap();
    assert!(content.len() < text.len() && content.starts_with(&had.concat()));

    // The client on B got every chunk A sent, then the end: a failure naming the stored reply.
    let (rest, end) = follow_to_the_end(&mut on_b, 3).await;
    assert_eq!(format!("{}{}", had.concat(), rest.concat()), content);
    assert_eq!(end["success"], false, "{end}");
    assert!(
        end["error"].as_str().unwrap().contains("service restarted"),
        "{end}"
    );
    assert_eq!(end["data"]["message_id"], stored["id"], "{end}");

    // A client that comes back later still gets that end.
    let mut later = b.connect(&format!("/ws/chat/ivy?token={token}")).await;
    let (_, replayed, end_again) = resume(&mut later, &conversation, 0).await;
    assert_eq!(replayed.concat(), content);
    assert_eq!(end_again["data"]["message_id"], stored["id"]);

    // The conversation takes the next message at once: A released its lease before exiting.
    b.llm().script(Behaviour::reply("B answers"));
    let (_, answer) = on_b.chat(&conversation, "are you there?").await;
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["ai_response"]["content"], "B answers");
}

#[tokio::test]
async fn a_rest_caller_waiting_at_shutdown_gets_503_and_the_reply_is_stored_partial() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.limits.shutdown_timeout = Duration::from_secs(2)),
    )
    .await;
    app.llm()
        .script(slow_reply(2000, Duration::from_millis(20)).1);
    let token = app.token("kim", USER);
    let conversation = app.new_conversation(&token).await;
    let mut watcher = app
        .connect(&format!("/ws/{conversation}?token={token}"))
        .await;
    watcher.send(json!({"type": "ping"})).await;
    watcher.next().await;
    let chat = app
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{conversation}/chat"),
        )
        .bearer_auth(&token)
        .json(&json!({"content": "go on"}))
        .send();
    let answer = tokio::spawn(chat);
    assert_eq!(
        watcher.next_after_start().await["type"],
        "ai_response_chunk"
    );

    app.state.shutdown.cancel();
    let answer = answer.await.unwrap().expect("the caller gets an answer");
    assert_eq!(answer.status(), 503);
    let detail = answer.json::<Value>().await.unwrap()["detail"].clone();
    assert!(
        detail.as_str().unwrap().contains("service restarted"),
        "{detail}"
    );
    let key = app.state.ids.conversation.decode(&conversation).unwrap();
    let messages = app.stored_messages(key).await;
    let reply = messages.last().expect("messages");
    assert_eq!(reply.role, db::MessageRole::Assistant);
    assert!(!reply.content.is_empty());
    let metadata = reply.message_metadata.as_ref().expect("metadata");
    assert_eq!(metadata["incomplete"], true, "{metadata}");
}

#[tokio::test]
async fn sigterm_right_after_a_reply_still_sends_its_end_to_the_other_instances() {
    let prefix = unique_prefix();
    let Some(b) = instance_b(&prefix).await else {
        return;
    };
    // Redis answers A late, so A's events are still queued when the reply is over: without
    // a flush at shutdown, the last of them never leave the process.
    let slow_redis = SlowRedis::start(&redis_url(), Duration::from_millis(250)).await;
    let llm = FakeLlm::start().await;
    let pieces: Vec<String> = (1..=3000).map(|i| format!("w{i} ")).collect();
    let text = pieces.concat();
    llm.script(Behaviour::Reply {
        pieces,
        delay: Duration::ZERO,
    });
    let a = instance_a(&b, &llm, &slow_redis.url, &prefix, &[]).await;
    let token = b.token("jay", USER);
    let conversation = b.new_conversation(&token).await;

    let answer = b
        .client
        .post(format!(
            "{}/api/v1/conversations/{conversation}/chat",
            a.address
        ))
        .bearer_auth(&token)
        .json(&json!({"content": "a long one"}))
        .send()
        .await
        .expect("A answers");
    assert_eq!(answer.status(), 200);
    let exit = a.terminate().await;
    assert!(exit.success(), "A exits cleanly: {exit}");

    // Once A has exited, a client resuming on B gets every chunk and the answer.
    let mut on_b = b.connect(&format!("/ws/chat/jay?token={token}")).await;
    let (seqs, deltas, end) = resume(&mut on_b, &conversation, 0).await;
    assert_eq!(
        seqs,
        (1..=3000).collect::<Vec<u64>>(),
        "no gap, no duplicate"
    );
    assert_eq!(end["success"], true, "{end}");
    assert_eq!(end["data"]["ai_response"]["content"], text.as_str());
    assert_eq!(deltas.concat(), text);
}

/// A TCP proxy in front of Redis whose answers arrive `delay` late, as from a Redis that is
/// far away or busy. Requests go through at once.
struct SlowRedis {
    /// `redis://` URL of the proxy.
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl SlowRedis {
    async fn start(target_url: &str, delay: Duration) -> Self {
        let target = target_url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .expect("host and port")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let address = listener.local_addr().expect("an address");
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if let Ok(server) = TcpStream::connect(&target).await {
                    tokio::spawn(relay(client, server, delay));
                }
            }
        });
        Self {
            url: format!("redis://{address}/0"),
            task,
        }
    }
}

impl Drop for SlowRedis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Passes requests on at once and answers `delay` after Redis sent them, in order, until
/// either side closes.
async fn relay(client: TcpStream, server: TcpStream, delay: Duration) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (answers, mut late) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = server_read.read(&mut buffer).await {
            if answers
                .send((Instant::now() + delay, buffer[..read].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = late.recv().await {
            tokio::time::sleep_until(due).await;
            if client_write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
        _ = async { tokio::join!(read, write) } => {}
    }
}
