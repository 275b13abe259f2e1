//! Faults across instances, as a user meets them: an instance killed mid-reply, a restart of
//! the only instance, Redis restarted empty or out of reach while a reply runs, a lease that
//! another generation takes, and a Redis command that fails while Redis answers.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::fake_llm::Behaviour;
use crate::helpers::*;
use crate::live::{
    redis_url, resume, send_and_read_chunks, slow_reply, sse, two_instances, two_instances_on,
    unique_prefix, wait_for_redis, Killable, OwnRedis,
};
use crate::test_database::TestDatabase;
use crate::ws_client::WsClient;

/// A connection of the test's own to the Redis at `url`.
async fn redis_at(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers")
}

/// The keys under `prefix` whose name contains `part`.
async fn keys(redis: &mut MultiplexedConnection, prefix: &str, part: &str) -> Vec<String> {
    redis
        .keys(format!("{prefix}:*{part}*"))
        .await
        .expect("KEYS answers")
}

/// Whether the one lease under `prefix` names `generation`, and its owner counts a reply.
async fn lease_held(mut redis: MultiplexedConnection, prefix: &str, generation: &str) -> bool {
    let leases = keys(&mut redis, prefix, "lease").await;
    let [lease] = leases.as_slice() else {
        return false;
    };
    let holder: Option<String> = redis.get(lease).await.expect("GET answers");
    let mut counted = 0;
    for owner in keys(&mut redis, prefix, "owner").await {
        counted += redis.zcard::<_, u64>(owner).await.expect("ZCARD answers");
    }
    holder.is_some_and(|h| h.ends_with(&format!("|{generation}"))) && counted > 0
}

/// Sends a message and reads the reply's start and first chunk; returns the reply's id.
async fn start_reply(ws: &mut WsClient, conversation: &str) -> String {
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "talk"}}))
        .await;
    let start = ws.next().await;
    assert_eq!(start["type"], "ai_response_start", "{start}");
    let chunk = ws.next().await;
    assert_eq!(chunk["type"], "ai_response_chunk", "{chunk}");
    start["data"]["generation_id"]
        .as_str()
        .expect("a generation id")
        .to_owned()
}

/// A follower's frames up to the end of a reply: its `message_broadcast`, or a failure.
async fn end_of_reply(ws: &mut WsClient) -> Value {
    loop {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("ai_response_start" | "ai_response_chunk" | "tool_call" | "tool_result") => {}
            _ => return frame,
        }
    }
}

/// What a fresh connection to `app` is answered when it sends on `conversation`.
async fn refusal(app: &TestApp, token: &str, user: &str, conversation: &str) -> String {
    let mut ws = app.connect(&format!("/ws/chat/{user}?token={token}")).await;
    let (_, answer) = ws.chat(conversation, "me too").await;
    assert_eq!(answer["success"], false, "{answer}");
    answer["error"].as_str().expect("an error").to_owned()
}

/// Two instances on a Redis of the test's own, with leases of one second and one reply at a
/// time per user, and a user with two conversations.
struct Fenced {
    redis: OwnRedis,
    a: TestApp,
    b: TestApp,
    prefix: String,
    user: &'static str,
    token: String,
    first: String,
    second: String,
}

impl Fenced {
    async fn start(user: &'static str) -> Option<Self> {
        let redis = OwnRedis::start().await;
        let (a, b) = two_instances_on(&redis.url(), |s| {
            s.live.generation_lease = Duration::from_secs(1);
            s.limits.max_generations_per_user = 1;
        })
        .await?;
        let prefix = a.state.settings.live.redis_prefix.clone();
        let token = a.token(user, USER);
        let first = a.new_conversation(&token).await;
        let second = a.new_conversation(&token).await;
        Some(Self {
            redis,
            a,
            b,
            prefix,
            user,
            token,
            first,
            second,
        })
    }

    /// A connection of the user's to `app`.
    async fn connect(&self, app: &TestApp) -> WsClient {
        app.connect(&format!("/ws/chat/{}?token={}", self.user, self.token))
            .await
    }

    /// Stops Redis and waits until both instances see it gone.
    async fn redis_down(&mut self) {
        self.redis.stop().await;
        wait_for_redis(&self.a, "unreachable").await;
        wait_for_redis(&self.b, "unreachable").await;
    }

    /// Starts Redis again, empty, and waits until both instances see it back.
    async fn redis_back(&mut self) {
        self.redis.restart().await;
        wait_for_redis(&self.a, "connected").await;
        wait_for_redis(&self.b, "connected").await;
    }

    /// Waits until `generation` holds the lease of its conversation (`busy`) and counts for
    /// its owner, then checks that B refuses a reply there and one on `other`.
    async fn assert_held(&self, generation: &str, busy: &str, other: &str) {
        let connection = redis_at(&self.redis.url()).await;
        eventually("the lease is held", PATIENCE, || {
            lease_held(connection.clone(), &self.prefix, generation)
        })
        .await;
        let refused = refusal(&self.b, &self.token, self.user, busy).await;
        assert!(refused.contains("already being generated"), "{refused}");
        let refused = refusal(&self.b, &self.token, self.user, other).await;
        assert!(refused.contains("Too many"), "{refused}");
    }
}

#[tokio::test]
async fn an_instance_killed_mid_reply_has_its_reply_stored_and_ended_by_another() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let (prefix, url) = (unique_prefix(), redis_url());
    let lease = Duration::from_secs(2);
    let b = spawn_app_with(
        TestOptions::new()
            .database(database)
            .fake_llm()
            .redis(&url, &prefix)
            .settings(move |s| s.live.generation_lease = lease),
    )
    .await;
    let (url_a, prefix_a, database_url) = (url.clone(), prefix.clone(), b.database_url());
    let instance_a = Killable::start(move || {
        TestOptions::new()
            .shared_database(&database_url)
            .fake_llm()
            .redis(&url_a, &prefix_a)
            .settings(move |s| s.live.generation_lease = lease)
    })
    .await;
    let token = b.token("fay", USER);
    let conversation = b.new_conversation(&token).await;
    let mut on_a = instance_a
        .connect(&format!("/ws/chat/fay?token={token}"))
        .await;
    let had = send_and_read_chunks(&mut on_a, &conversation, 2).await;
    instance_a.kill();

    // The dead reply's log still expires on its own.
    let mut redis = redis_at(&url).await;
    let logs = keys(&mut redis, &prefix, "reply").await;
    assert!(!logs.is_empty(), "the reply is logged in Redis");
    for log in logs {
        let left: i64 = redis.pttl(&log).await.expect("PTTL answers");
        assert!(left > 0, "{log} never expires");
    }

    // B refuses a new message while the reply is unfinished.
    b.llm().set_fallback(Behaviour::reply("B answers"));
    let mut on_b = b.connect(&format!("/ws/chat/fay?token={token}")).await;
    let (_, busy) = on_b.chat(&conversation, "anyone?").await;
    assert!(
        busy["error"].as_str().unwrap().contains("already"),
        "{busy}"
    );

    // A client that resumes on B gets what A sent, then the reply's end: a failure naming
    // the partial reply that B stored. So does a stream of it, and a follower.
    let mut resumer = b.connect(&format!("/ws/chat/fay?token={token}")).await;
    let path = format!("/api/v1/conversations/{conversation}/stream");
    let ((seqs, deltas, end), streamed) =
        tokio::join!(resume(&mut resumer, &conversation, 0), b.get(&path, &token));
    assert_eq!(end["type"], "send_message", "{end}");
    assert_eq!(end["success"], false, "{end}");
    assert!(end["error"].as_str().unwrap().contains("stopped"), "{end}");
    let message_id = end["data"]["message_id"]
        .as_str()
        .expect("the stored partial reply is named");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let partial = deltas.concat();
    assert!(partial.starts_with(&had.concat()), "{partial}");

    let messages = b.messages(&token, &conversation).await;
    assert_eq!(
        messages.len(),
        2,
        "the user message, then the reply: {messages:?}"
    );
    let reply = &messages[1];
    assert_eq!(reply["id"], message_id);
    assert_eq!(reply["role"], "assistant");
    assert_eq!(reply["content"], partial.as_str());
    assert_eq!(reply["message_metadata"]["incomplete"], true, "{reply}");
    assert!(reply["message_metadata"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("instance generating it stopped")));

    let events = sse(&streamed.text);
    let (name, _, data) = events.last().expect("SSE events");
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(data["message_id"], message_id);

    let told = end_of_reply(&mut on_b).await;
    assert_eq!(told["type"], "error", "{told}");
    assert_eq!(told["data"]["message_id"], message_id);

    // The conversation is free again.
    let (_, answer) = on_b.chat(&conversation, "anyone now?").await;
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["ai_response"]["content"], "B answers");
}

#[tokio::test]
async fn a_restarted_instance_stores_the_replies_it_left_unfinished() {
    let database = TestDatabase::sqlite();
    let url = database.url().to_owned();
    let first_url = url.clone();
    let first =
        Killable::start(move || TestOptions::new().shared_database(&first_url).fake_llm()).await;
    let token = sign(&json!({"sub": "gil", "exp": now() + 3600, "roles": ["user"]}));
    let created: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/users/me/conversations", first.address))
        .bearer_auth(&token)
        .json(&json!({"title": "cut short"}))
        .send()
        .await
        .expect("the first instance answers")
        .json()
        .await
        .expect("a conversation");
    let conversation = created["id"].as_str().expect("an id").to_owned();
    let mut ws = first.connect(&format!("/ws/chat/gil?token={token}")).await;
    send_and_read_chunks(&mut ws, &conversation, 2).await;
    first.kill();

    let second = spawn_app_with(TestOptions::new().shared_database(&url)).await;
    let messages = second.messages(&token, &conversation).await;
    assert_eq!(
        messages.len(),
        2,
        "the user message, then the reply: {messages:?}"
    );
    assert_eq!(messages[0]["content"], "talk");
    let reply = &messages[1];
    assert_eq!(reply["role"], "assistant");
    assert_eq!(reply["message_metadata"]["incomplete"], true, "{reply}");
    assert!(reply["message_metadata"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("restarted")));

    let mut ws = second.connect(&format!("/ws/chat/gil?token={token}")).await;
    let (_, answer) = ws.chat(&conversation, "again").await;
    assert_eq!(answer["success"], true, "{answer}");
    drop(second);
    drop(database);
}

#[tokio::test]
async fn a_lease_that_a_redis_restart_lost_is_held_and_counted_again() {
    let Some(mut fenced) = Fenced::start("hal").await else {
        return;
    };
    let (first, second) = (fenced.first.clone(), fenced.second.clone());
    fenced
        .a
        .llm()
        .script(slow_reply(1000, Duration::from_millis(20)).1);
    let mut on_a = fenced.connect(&fenced.a).await;
    let generation = start_reply(&mut on_a, &first).await;

    fenced.redis_down().await;
    fenced.redis_back().await;
    fenced.assert_held(&generation, &first, &second).await;
    // B's stop reaches the instance that runs the reply.
    let stop = fenced
        .b
        .post(
            &format!("/api/v1/conversations/{first}/stop"),
            &fenced.token,
        )
        .await;
    assert_eq!(stop.json()["stopped"], true);
    let (_, done) = on_a.collect_reply().await;
    assert_eq!(done["data"]["ai_response"]["stopped"], true, "{done}");
}

#[tokio::test]
async fn a_reply_whose_lease_another_generation_took_stops_and_keeps_its_log() {
    let Some((a, b)) = two_instances(|s| s.live.generation_lease = Duration::from_secs(1)).await
    else {
        return;
    };
    let prefix = a.state.settings.live.redis_prefix.clone();
    let token = a.token("ida", USER);
    let conversation = a.new_conversation(&token).await;
    let (text, behaviour) = slow_reply(1000, Duration::from_millis(20));
    a.llm().script(behaviour);
    let mut on_a = a.connect(&format!("/ws/chat/ida?token={token}")).await;
    let generation = start_reply(&mut on_a, &conversation).await;

    let mut redis = redis_at(&redis_url()).await;
    let leases = keys(&mut redis, &prefix, "lease").await;
    let [lease] = leases.as_slice() else {
        panic!("one lease: {leases:?}");
    };
    let _: () = redis
        .pset_ex(lease, "elsewhere|another-reply", 30_000)
        .await
        .expect("SET answers");

    // The reply stops at its next renewal and is stored as stopped.
    let (_, done) = on_a.collect_reply().await;
    let stored = &done["data"]["ai_response"];
    assert_eq!(stored["stopped"], true, "{done}");
    assert!(stored["content"].as_str().unwrap().len() < text.len());
    let messages = b.messages(&token, &conversation).await;
    assert_eq!(
        messages.last().unwrap()["message_metadata"]["stopped"],
        true
    );

    // Another reply on the conversation leaves the first one's log alone.
    let _: () = redis.del(lease).await.expect("DEL answers");
    b.llm().set_fallback(Behaviour::reply("a reply of its own"));
    let mut on_b = b.connect(&format!("/ws/chat/ida?token={token}")).await;
    let (_, answer) = on_b.chat(&conversation, "next").await;
    assert_eq!(answer["success"], true, "{answer}");
    let logs = keys(&mut redis, &prefix, &format!("reply:{generation}")).await;
    let [log] = logs.as_slice() else {
        panic!("the first reply's log: {logs:?}");
    };
    let entries: u64 = redis.xlen(log).await.expect("XLEN answers");
    assert!(entries > 2, "{entries} entries");
}

#[tokio::test]
async fn a_reply_begun_during_an_outage_is_fenced_and_its_end_reaches_followers() {
    let Some(mut fenced) = Fenced::start("jon").await else {
        return;
    };
    let (first, second) = (fenced.first.clone(), fenced.second.clone());
    let path = format!("/ws/{first}?token={}", fenced.token);
    // A follower on B sees a reply before the outage.
    let mut before = fenced.b.connect(&path).await;
    before.send(json!({"type": "ping"})).await;
    assert_eq!(before.next().await["type"], "pong");
    fenced.a.llm().script(Behaviour::reply("said before"));
    let (_, said) = fenced.connect(&fenced.a).await.chat(&first, "hi").await;
    assert_eq!(end_of_reply(&mut before).await["data"], said["data"]);

    fenced.redis_down().await;
    // Another follower joins on B, and A answers on the conversation, each on its own.
    let mut follower = fenced.b.connect(&path).await;
    follower.send(json!({"type": "ping"})).await;
    assert_eq!(follower.next().await["type"], "pong");
    let a = &fenced.a;
    a.llm()
        .script(Behaviour::reply("said while Redis was away"));
    let (_, said) = fenced.connect(a).await.chat(&first, "hello?").await;
    assert_eq!(said["success"], true, "{said}");
    // And A begins a long reply on another conversation.
    a.llm()
        .script(slow_reply(1000, Duration::from_millis(20)).1);
    let mut long = fenced.connect(a).await;
    let generation = start_reply(&mut long, &second).await;

    fenced.redis_back().await;
    // Both followers get the end of the reply they followed.
    for follower in [&mut follower, &mut before] {
        let end = end_of_reply(follower).await;
        assert_eq!(end["type"], "message_broadcast", "{end}");
        assert_eq!(end["data"], said["data"]);
    }
    // The long reply holds its conversation and counts for its owner.
    fenced.assert_held(&generation, &second, &first).await;
}

#[tokio::test]
async fn one_failing_redis_command_is_not_an_outage() {
    let redis = OwnRedis::start().await;
    let Some((a, b)) = two_instances_on(&redis.url(), |_| {}).await else {
        return;
    };
    let token = a.token("kim", USER);
    let conversation = a.new_conversation(&token).await;
    let mut watcher = b
        .connect(&format!("/ws/{conversation}?token={token}"))
        .await;
    watcher.send(json!({"type": "ping"})).await;
    assert_eq!(watcher.next().await["type"], "pong");
    // Every append to a reply's log fails from now on; the rest works.
    let mut connection = redis_at(&redis.url()).await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-xadd"])
        .query_async(&mut connection)
        .await
        .expect("ACL answers");

    let (text, behaviour) = slow_reply(20, Duration::from_millis(30));
    a.llm().script(behaviour);
    let mut sender = a.connect(&format!("/ws/chat/kim?token={token}")).await;
    let reply = sender.chat(&conversation, "hello");
    tokio::pin!(reply);
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut seen = Vec::new();
    let (_, answer) = loop {
        tokio::select! {
            answer = &mut reply => break answer,
            health = async {
                ticker.tick().await;
                a.get_public("/health").await
            } => seen.push(health.json()["redis"].clone()),
        }
    };
    assert_eq!(answer["success"], true, "{answer}");
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|state| state == "connected"), "{seen:?}");
    // The broadcast still crossed; what failed is counted.
    let (chunks, broadcast) = watcher.collect_broadcast().await;
    assert_eq!(chunks.concat(), text);
    assert_eq!(broadcast["data"], answer["data"]);
    let undelivered = a
        .scrape()
        .await
        .value("live_events_undelivered_total", &[("reason", "failed")]);
    assert!(undelivered > 0.0, "{undelivered}");
}
