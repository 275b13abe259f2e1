//! Live chat across reconnects and instances: resuming a reply over WebSocket and SSE,
//! stopping it over REST, and two instances on one PostgreSQL and one Redis.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_llm::Behaviour;
use crate::helpers::*;
use crate::test_database::TestDatabase;
use crate::ws_client::WsClient;

/// The Redis the tests share, each under a prefix of its own.
pub fn redis_url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

pub fn unique_prefix() -> String {
    format!("chat-test-{}", uuid::Uuid::new_v4().simple())
}

/// A reply of `words` words, one chunk each, `delay` apart.
pub fn slow_reply(words: usize, delay: Duration) -> (String, Behaviour) {
    let text: String = (1..=words).map(|i| format!("w{i} ")).collect();
    let behaviour = Behaviour::reply_slowly(&text, delay);
    (text, behaviour)
}

/// Sends a message and reads frames up to and including the `count`th chunk; returns the
/// deltas so far.
pub async fn send_and_read_chunks(
    ws: &mut WsClient,
    conversation: &str,
    count: usize,
) -> Vec<String> {
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "talk"}}))
        .await;
    let mut deltas = Vec::new();
    while deltas.len() < count {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("ai_response_start") => {}
            Some("ai_response_chunk") => {
                assert_eq!(frame["data"]["seq"], deltas.len() as u64 + 1, "{frame}");
                deltas.push(frame["data"]["delta"].as_str().unwrap().to_owned());
            }
            _ => panic!("unexpected frame: {frame}"),
        }
    }
    deltas
}

/// Sends `resume` and collects the replay and what follows, until the `send_message` answer.
pub async fn resume(
    ws: &mut WsClient,
    conversation: &str,
    after_seq: u64,
) -> (Vec<u64>, Vec<String>, Value) {
    ws.send(json!({"type": "resume",
        "data": {"conversation_id": conversation, "after_seq": after_seq}}))
        .await;
    let (mut seqs, mut deltas) = (Vec::new(), Vec::new());
    loop {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("ai_response_start") => assert!(frame["data"]["generation_id"].is_string()),
            Some("ai_response_chunk") => {
                seqs.push(frame["data"]["seq"].as_u64().unwrap());
                deltas.push(frame["data"]["delta"].as_str().unwrap().to_owned());
            }
            Some("send_message") => return (seqs, deltas, frame),
            _ => panic!("unexpected frame while resuming: {frame}"),
        }
    }
}

pub fn stored_reply(messages: &[Value]) -> String {
    messages
        .iter()
        .rfind(|m| m["role"] == "assistant")
        .expect("a stored reply")["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_client_that_drops_mid_reply_resumes_on_the_in_process_hub() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let (text, behaviour) = slow_reply(12, Duration::from_millis(40));
    app.llm().script(behaviour);
    let token = app.token("rhea", USER);
    let conversation = app.new_conversation(&token).await;
    let mut first = app.connect(&format!("/ws/chat/rhea?token={token}")).await;
    let had = send_and_read_chunks(&mut first, &conversation, 3).await;
    drop(first);

    let mut second = app.connect(&format!("/ws/chat/rhea?token={token}")).await;
    let (seqs, rest, answer) = resume(&mut second, &conversation, 3).await;
    assert_eq!(
        seqs,
        (4..=12).collect::<Vec<u64>>(),
        "no gaps, no duplicates"
    );
    assert_eq!(answer["success"], true, "{answer}");
    let joined = format!("{}{}", had.concat(), rest.concat());
    assert_eq!(joined, text);
    assert_eq!(answer["data"]["ai_response"]["content"], text.as_str());
    assert_eq!(
        stored_reply(&app.messages(&token, &conversation).await),
        text
    );
}

#[tokio::test]
async fn a_finished_reply_is_resumed_at_once_and_an_old_one_not_at_all() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let (text, behaviour) = slow_reply(5, Duration::from_millis(10));
    app.llm().script(behaviour);
    let token = app.token("sora", USER);
    let conversation = app.new_conversation(&token).await;
    let mut first = app.connect(&format!("/ws/chat/sora?token={token}")).await;
    let had = send_and_read_chunks(&mut first, &conversation, 1).await;
    drop(first);
    app.replies_settled().await;

    let mut second = app.connect(&format!("/ws/chat/sora?token={token}")).await;
    let (seqs, rest, answer) = resume(&mut second, &conversation, 1).await;
    assert_eq!(seqs, vec![2, 3, 4, 5]);
    assert_eq!(format!("{}{}", had.concat(), rest.concat()), text);
    assert_eq!(answer["data"]["ai_response"]["content"], text.as_str());

    // Nothing to resume on a conversation without a recent reply.
    let other = app.new_conversation(&token).await;
    second
        .send(json!({"type": "resume", "data": {"conversation_id": other}}))
        .await;
    let idle = second.next().await;
    assert_eq!(idle["type"], "resume");
    assert_eq!(idle["success"], true);
    assert_eq!(idle["data"]["generating"], false);
}

#[tokio::test]
async fn a_reply_past_the_resume_window_is_not_replayed() {
    let app =
        spawn_app_with(TestOptions::new().settings(|s| s.live.resume_window = Duration::ZERO))
            .await;
    let token = app.token("tara", USER);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/tara?token={token}")).await;
    let (_, done) = ws.chat(&conversation, "hello").await;
    assert_eq!(done["success"], true);
    ws.send(json!({"type": "resume", "data": {"conversation_id": conversation}}))
        .await;
    let answer = ws.next().await;
    assert_eq!(answer["data"]["generating"], false, "{answer}");
}

#[tokio::test]
async fn resume_is_scoped_to_the_owner() {
    let app = spawn_app().await;
    let owner = app.token("uma", USER);
    let conversation = app.new_conversation(&owner).await;
    let other = app.token("vic", USER);
    let mut ws = app.connect(&format!("/ws/chat/vic?token={other}")).await;
    ws.send(json!({"type": "resume", "data": {"conversation_id": conversation}}))
        .await;
    let refused = ws.next().await;
    assert_eq!(refused["type"], "resume");
    assert_eq!(refused["success"], false);
    assert!(refused["error"].as_str().unwrap().contains("not found"));
}

/// The events of an SSE body: (event, id, data).
pub fn sse(text: &str) -> Vec<(String, Option<String>, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            Some((name?, id, data?))
        })
        .collect()
}

#[tokio::test]
async fn the_sse_stream_resumes_after_last_event_id_and_answers_204_when_idle() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let (text, behaviour) = slow_reply(8, Duration::from_millis(30));
    app.llm().script(behaviour);
    let token = app.token("wen", USER);
    let conversation = app.new_conversation(&token).await;
    let path = format!("/api/v1/conversations/{conversation}/stream");
    assert_eq!(app.get(&path, &token).await.status, 204);

    // The chat route's own stream numbers its chunks.
    let streamed = app.chat_stream(&token, &conversation, "go").await;
    let events = sse(&streamed.text);
    let ids: Vec<String> = events
        .iter()
        .filter(|(name, _, _)| name == "chunk")
        .filter_map(|(_, id, _)| id.clone())
        .collect();
    assert_eq!(ids, (1..=8).map(|i| i.to_string()).collect::<Vec<_>>());

    // Within the window, the stream replays what came after the last id, then `done`.
    let resumed = app
        .send(
            app.request(reqwest::Method::GET, &path)
                .bearer_auth(&token)
                .header("Last-Event-ID", "5"),
        )
        .await;
    assert_eq!(resumed.status, 200);
    let events = sse(&resumed.text);
    let names: Vec<&str> = events.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, vec!["start", "chunk", "chunk", "chunk", "done"]);
    let tail: String = events
        .iter()
        .filter(|(n, _, _)| n == "chunk")
        .map(|(_, _, d)| d["delta"].as_str().unwrap().to_owned())
        .collect();
    assert!(text.ends_with(&tail) && tail == "w6 w7 w8 ", "{tail}");
    assert_eq!(
        events.last().unwrap().2["ai_response"]["content"],
        text.as_str()
    );

    // Another user learns nothing of it.
    let stranger = app.token("xan", USER);
    assert_eq!(app.get(&path, &stranger).await.status, 404);
}

#[tokio::test]
async fn the_sse_stream_follows_a_reply_live() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let (text, behaviour) = slow_reply(10, Duration::from_millis(30));
    app.llm().script(behaviour);
    let token = app.token("yara", USER);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/yara?token={token}")).await;
    send_and_read_chunks(&mut ws, &conversation, 2).await;
    let path = format!("/api/v1/conversations/{conversation}/stream");
    let live = app.get(&path, &token).await;
    assert_eq!(live.status, 200);
    let events = sse(&live.text);
    let chunks: String = events
        .iter()
        .filter(|(n, _, _)| n == "chunk")
        .map(|(_, _, d)| d["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        chunks, text,
        "from the start, since no Last-Event-ID was given"
    );
    assert_eq!(events.last().unwrap().0, "done");
}

#[tokio::test]
async fn rest_stop_stops_the_reply_and_is_scoped() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let (text, behaviour) = slow_reply(200, Duration::from_millis(20));
    app.llm().script(behaviour);
    let token = app.token("zed", USER);
    let conversation = app.new_conversation(&token).await;
    let stop = format!("/api/v1/conversations/{conversation}/stop");
    let stranger = app.token("amy", USER);
    assert_eq!(app.post(&stop, &stranger).await.status, 404);
    assert_eq!(app.post(&stop, &token).await.json()["stopped"], false);

    let mut ws = app.connect(&format!("/ws/chat/zed?token={token}")).await;
    send_and_read_chunks(&mut ws, &conversation, 1).await;
    let stopped = app.post(&stop, &token).await;
    assert_eq!(stopped.status, 200);
    assert_eq!(stopped.json()["stopped"], true);
    let (_, answer) = ws.collect_reply().await;
    assert_eq!(answer["data"]["ai_response"]["stopped"], true);
    let partial = answer["data"]["ai_response"]["content"].as_str().unwrap();
    assert!(partial.len() < text.len());
    let messages = app.messages(&token, &conversation).await;
    assert_eq!(messages[1]["message_metadata"]["stopped"], true);
}

/// Two instances of one deployment: one PostgreSQL database, one Redis, a fake LLM each.
pub async fn two_instances(
    change: impl Fn(&mut Settings) + Clone + Send + 'static,
) -> Option<(TestApp, TestApp)> {
    two_instances_on(&redis_url(), change).await
}

/// Two instances of one deployment on the Redis at `url`, under a prefix of their own.
pub async fn two_instances_on(
    url: &str,
    change: impl Fn(&mut Settings) + Clone + Send + 'static,
) -> Option<(TestApp, TestApp)> {
    let database = TestDatabase::postgres().await?;
    let prefix = unique_prefix();
    let url = url.to_owned();
    let first_change = change.clone();
    let a = spawn_app_with(
        TestOptions::new()
            .database(database)
            .fake_llm()
            .redis(&url, &prefix)
            .settings(move |s| first_change(s)),
    )
    .await;
    let b = spawn_app_with(
        TestOptions::new()
            .shared_database(&a.database_url())
            .fake_llm()
            .redis(&url, &prefix)
            .settings(move |s| change(s)),
    )
    .await;
    for app in [&a, &b] {
        let health = app.get_public("/health").await.json();
        assert_eq!(health["redis"], "connected", "{health}");
    }
    Some((a, b))
}

#[tokio::test]
async fn broadcasts_and_stops_cross_instances() {
    let Some((a, b)) = two_instances(|_| {}).await else {
        return;
    };
    let token = a.token("bea", USER);
    let conversation = a.new_conversation(&token).await;
    let mut sender = a.connect(&format!("/ws/chat/bea?token={token}")).await;
    let mut watcher = b
        .connect(&format!("/ws/{conversation}?token={token}"))
        .await;
    // An answer proves the watcher's instance follows the conversation.
    watcher.send(json!({"type": "ping"})).await;
    watcher.next().await;

    a.llm().script(Behaviour::reply("across the fleet"));
    let (chunks, answer) = sender.chat(&conversation, "hello B").await;
    assert_eq!(answer["success"], true, "{answer}");
    let (watched, broadcast) = watcher.collect_broadcast().await;
    assert_eq!(watched, chunks);
    assert_eq!(broadcast["data"], answer["data"]);

    // A stop that reaches B stops the reply that A generates.
    let (text, behaviour) = slow_reply(300, Duration::from_millis(20));
    a.llm().script(behaviour);
    sender
        .send(json!({"type": "send_message",
            "data": {"conversation_id": conversation, "content": "long"}}))
        .await;
    assert_eq!(sender.next_after_start().await["type"], "ai_response_chunk");
    watcher
        .send(json!({"type": "stop_generation", "data": {"conversation_id": conversation}}))
        .await;
    let stop = loop {
        let frame = watcher.next().await;
        if frame["type"] == "stop_generation" {
            break frame;
        }
    };
    assert_eq!(stop["data"]["stopped"], true, "{stop}");
    let (_, stopped) = sender.collect_reply().await;
    assert_eq!(stopped["data"]["ai_response"]["stopped"], true);
    let partial = stopped["data"]["ai_response"]["content"].as_str().unwrap();
    assert!(partial.len() < text.len());
    let messages = b.messages(&token, &conversation).await;
    let last = messages.last().unwrap();
    assert_eq!(last["content"], partial);
    assert_eq!(last["message_metadata"]["stopped"], true);

    // Ending on B reaches A.
    watcher
        .send(json!({"type": "end_conversation", "data": {}}))
        .await;
    let ended = loop {
        let frame = sender.next().await;
        if frame["type"] == "conversation_ended" {
            break frame;
        }
    };
    assert_eq!(ended["data"]["conversation_id"], conversation.as_str());
}

#[tokio::test]
async fn generation_limits_hold_across_instances() {
    let Some((a, b)) = two_instances(|s| s.limits.max_generations_per_user = 1).await else {
        return;
    };
    let token = a.token("cal", USER);
    let first = a.new_conversation(&token).await;
    let second = a.new_conversation(&token).await;
    let (_, behaviour) = slow_reply(100, Duration::from_millis(20));
    a.llm().script(behaviour);
    let mut on_a = a.connect(&format!("/ws/chat/cal?token={token}")).await;
    send_and_read_chunks(&mut on_a, &first, 1).await;

    let mut on_b = b.connect(&format!("/ws/chat/cal?token={token}")).await;
    let (_, busy) = on_b.chat(&first, "me too").await;
    assert!(
        busy["error"]
            .as_str()
            .unwrap()
            .contains("already being generated"),
        "{busy}"
    );
    let (_, too_many) = on_b.chat(&second, "and here").await;
    assert!(
        too_many["error"].as_str().unwrap().contains("Too many"),
        "{too_many}"
    );

    // Once the reply on A is stopped and stored, B may generate.
    on_a.send(json!({"type": "stop_generation", "data": {"conversation_id": first}}))
        .await;
    let done = loop {
        let frame = on_a.next().await;
        if frame["type"] == "send_message" {
            break frame;
        }
    };
    assert_eq!(done["data"]["ai_response"]["stopped"], true, "{done}");
    b.llm().script(Behaviour::reply("now it is my turn"));
    // A fresh connection: the first one follows the first conversation's events now.
    let mut fresh = b.connect(&format!("/ws/chat/cal?token={token}")).await;
    let (_, later) = fresh.chat(&second, "and now").await;
    assert_eq!(later["success"], true, "{later}");
}

#[tokio::test]
async fn a_client_resumes_on_another_instance_without_gaps_or_duplicates() {
    let Some((a, b)) = two_instances(|_| {}).await else {
        return;
    };
    let (text, behaviour) = slow_reply(15, Duration::from_millis(40));
    a.llm().script(behaviour);
    let token = a.token("dee", USER);
    let conversation = a.new_conversation(&token).await;
    let mut on_a = a.connect(&format!("/ws/chat/dee?token={token}")).await;
    let had = send_and_read_chunks(&mut on_a, &conversation, 4).await;
    drop(on_a);

    let mut on_b = b.connect(&format!("/ws/chat/dee?token={token}")).await;
    let (seqs, rest, answer) = resume(&mut on_b, &conversation, 4).await;
    assert_eq!(
        seqs,
        (5..=15).collect::<Vec<u64>>(),
        "no gaps, no duplicates"
    );
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(format!("{}{}", had.concat(), rest.concat()), text);
    assert_eq!(stored_reply(&b.messages(&token, &conversation).await), text);

    // After the reply, another instance still replays it within the window.
    let mut later = b.connect(&format!("/ws/chat/dee?token={token}")).await;
    let (seqs, _, answer) = resume(&mut later, &conversation, 13).await;
    assert_eq!(seqs, vec![14, 15]);
    assert_eq!(answer["data"]["ai_response"]["content"], text.as_str());
}

#[tokio::test]
async fn an_admin_deactivation_reaches_every_instance_at_once() {
    let Some((a, b)) = two_instances(|s| s.user_cache_ttl = Duration::from_secs(3600)).await else {
        return;
    };
    let token = a.token("eli", USER);
    let id = b.my_id(&token).await;
    a.me(&token).await;
    let admin = a.token("root", ADMIN);
    a.patch_json(
        &format!("/api/v1/users/{id}"),
        &admin,
        &json!({"is_active": false}),
    )
    .await
    .assert_status(200);
    // The invalidation travels through Redis; B's cached row would otherwise last an hour.
    eventually("B forgets the stale user", PATIENCE, || async {
        b.get("/api/v1/users/me", &token).await.status == 403
    })
    .await;
}

/// An instance on a runtime of its own, so that it can die at once: shutting the runtime
/// down drops every task where it stands, as a killed process would. Its fake LLM streams
/// 1,000 words, 50 ms apart.
pub struct Killable {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Killable {
    /// Starts the instance that `options` describe.
    pub async fn start(options: impl FnOnce() -> TestOptions + Send + 'static) -> Self {
        let (ready, address) = tokio::sync::oneshot::channel();
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            let app = runtime.block_on(async {
                let app = spawn_app_with(options()).await;
                app.llm()
                    .script(slow_reply(1000, Duration::from_millis(50)).1);
                app
            });
            ready.send(app.address.clone()).expect("the test waits");
            killed.recv().expect("the test kills");
            runtime.shutdown_background();
            drop(app);
        });
        let address = address.await.expect("the instance starts");
        Self {
            address,
            kill,
            thread,
        }
    }

    /// Opens a WebSocket to it.
    pub async fn connect(&self, path: &str) -> WsClient {
        WsClient::open(&self.address, path).await
    }

    /// Kills it, at once.
    pub fn kill(self) {
        self.kill.send(()).expect("the instance runs");
        self.thread.join().expect("the instance stops");
    }
}

/// A Redis server of the test's own, which it can stop and start again.
pub struct OwnRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self { port, child: None };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn restart(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let port = self.port;
        eventually("redis-server starts", PATIENCE, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("redis-server stops");
        }
    }
}

pub async fn wait_for_redis(app: &TestApp, state: &str) {
    eventually(&format!("redis {state}"), PATIENCE, || async {
        let health = app.get_public("/health").await;
        assert_eq!(
            health.status, 200,
            "Redis never makes the service unhealthy"
        );
        health.json()["redis"] == state
    })
    .await;
}

#[tokio::test]
async fn chat_survives_a_redis_outage_and_crosses_instances_again_after_it() {
    let mut redis = OwnRedis::start().await;
    let Some((a, b)) = two_instances_on(&redis.url(), |_| {}).await else {
        return;
    };
    let token = a.token("gus", USER);
    let conversation = a.new_conversation(&token).await;
    let mut sender = a.connect(&format!("/ws/chat/gus?token={token}")).await;
    let mut watcher = b
        .connect(&format!("/ws/{conversation}?token={token}"))
        .await;
    watcher.send(json!({"type": "ping"})).await;
    watcher.next().await;
    a.llm().set_fallback(Behaviour::reply("still here"));
    let (_, answer) = sender.chat(&conversation, "before").await;
    assert_eq!(watcher.collect_broadcast().await.1["data"], answer["data"]);

    redis.stop().await;
    wait_for_redis(&a, "unreachable").await;
    wait_for_redis(&b, "unreachable").await;
    // The gauge is process-wide, and other tests' instances set it too: only its presence
    // is this test's to check.
    assert!(a.scrape().await.has_series("redis_up"));
    // Each instance goes on alone.
    let (_, during) = sender.chat(&conversation, "during").await;
    assert_eq!(during["success"], true, "{during}");
    let mut alone = b.connect(&format!("/ws/chat/gus?token={token}")).await;
    b.llm().set_fallback(Behaviour::reply("B alone"));
    let (_, on_b) = alone.chat(&conversation, "on B").await;
    assert_eq!(on_b["success"], true, "{on_b}");
    // The watcher on B saw B's own reply.
    assert_eq!(watcher.collect_broadcast().await.1["data"], on_b["data"]);

    redis.restart().await;
    wait_for_redis(&a, "connected").await;
    wait_for_redis(&b, "connected").await;
    // Each instance publishes what it did alone once Redis is back: the other's members may
    // get those replies late, before the next one.
    sender
        .send(json!({"type": "send_message",
            "data": {"conversation_id": conversation, "content": "after"}}))
        .await;
    let after = frame_where(&mut sender, |f| f["type"] == "send_message").await;
    assert_eq!(after["success"], true, "{after}");
    let broadcast = frame_where(&mut watcher, |f| {
        f["type"] == "message_broadcast" && f["data"]["user_message"]["content"] == "after"
    })
    .await;
    assert_eq!(broadcast["data"], after["data"]);
}

/// The first frame that `wanted` accepts, skipping the others.
async fn frame_where(ws: &mut WsClient, wanted: impl Fn(&Value) -> bool) -> Value {
    loop {
        let frame = ws.next().await;
        if wanted(&frame) {
            return frame;
        }
    }
}
