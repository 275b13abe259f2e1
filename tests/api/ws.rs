//! The WebSocket chat protocol against a fake OpenAI-compatible server.

use std::time::Duration;

use serde_json::json;

use crate::fake_llm::{Behaviour, RAW_ERROR_MARKER};
use crate::helpers::{now, sign_with, spawn_app_with, wait_until, TestOptions, PATIENCE};

#[tokio::test]
async fn full_protocol_streams_chunks_then_the_stored_answer() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm()
        .script(Behaviour::reply("Hello there, how are you?"));
    let token = app.token("alice", &["user"]);
    let mut ws = app.connect(&format!("/ws/chat/alice?token={token}")).await;

    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next().await["type"], "pong");

    let conversation = ws.start().await;
    assert_eq!(conversation.len(), 12);
    let (chunks, answer) = ws.chat(&conversation, "Hi!").await;
    assert!(chunks.len() > 1, "expected several chunks: {chunks:?}");
    assert_eq!(answer["success"], true, "{answer}");
    let data = &answer["data"];
    assert_eq!(data["conversation_id"], conversation.as_str());
    assert_eq!(data["user_message"]["content"], "Hi!");
    assert_eq!(data["ai_response"]["content"], chunks.concat());
    assert_eq!(data["ai_response"]["content"], "Hello there, how are you?");
    assert!(data["ai_response"]["tokens_used"].as_i64().unwrap() > 0);

    // Both messages are stored, with the usage and response time on the reply.
    let messages = app.messages(&token, &conversation).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["id"], data["ai_response"]["id"]);
    assert!(messages[1]["response_time"].as_f64().unwrap() >= 0.0);
    assert!(
        messages[1]["message_metadata"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    // The LLM got the history and the key.
    let request = app.llm().last_request().unwrap();
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["messages"][0]["content"], "Hi!");

    // Ending refuses new messages until the conversation is reconnected.
    ws.send(json!({"type": "end_conversation", "data": {"conversation_id": conversation}}))
        .await;
    let ended = ws.next().await;
    assert_eq!(ended["type"], "end_conversation");
    assert_eq!(ended["data"]["status"], "ended");
    assert!(ended["data"]["ended_at"].is_string());
    let (_, refused) = ws.chat(&conversation, "still there?").await;
    assert_eq!(refused["success"], false);
    assert!(refused["error"].as_str().unwrap().contains("ended"));
    assert_eq!(app.messages(&token, &conversation).await.len(), 2);
}

#[tokio::test]
async fn a_second_connection_receives_broadcasts() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let token = app.token("bob", &["user"]);
    let conversation = app.new_conversation(&token).await;
    let mut sender = app.connect(&format!("/ws/chat/bob?token={token}")).await;
    let mut watcher = app
        .connect(&format!("/ws/{conversation}?token={token}"))
        .await;
    // A round trip proves the watcher is registered before the message is sent.
    watcher.send(json!({"type": "ping"})).await;
    watcher.next().await;

    let (chunks, answer) = sender.chat(&conversation, "broadcast me").await;
    assert_eq!(answer["success"], true);
    // The watcher sees the reply stream too, then the stored exchange.
    let (watched, broadcast) = watcher.collect_broadcast().await;
    assert_eq!(watched, chunks);
    assert_eq!(broadcast["type"], "message_broadcast");
    assert_eq!(broadcast["data"], answer["data"]);

    // A bound connection may omit the conversation id.
    watcher
        .send(json!({"type": "end_conversation", "data": {}}))
        .await;
    assert_eq!(watcher.next().await["success"], true);
    let ended = sender.next().await;
    assert_eq!(ended["type"], "conversation_ended");
    assert_eq!(ended["data"]["conversation_id"], conversation.as_str());
}

#[tokio::test]
async fn stop_generation_stores_the_partial_reply_marked_stopped() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let long = "word ".repeat(200);
    app.llm()
        .script(Behaviour::reply_slowly(&long, Duration::from_millis(20)));
    let token = app.token("carol", &["user"]);
    let mut ws = app.connect(&format!("/ws/chat/carol?token={token}")).await;
    let conversation = ws.start().await;
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "talk a lot"}}))
        .await;
    let first = ws.next_after_start().await;
    assert_eq!(first["type"], "ai_response_chunk");
    ws.send(json!({"type": "stop_generation", "data": {"conversation_id": conversation}}))
        .await;

    let mut chunks = vec![first["data"]["delta"].as_str().unwrap().to_owned()];
    let mut stop_answer = None;
    let answer = loop {
        let frame = ws.next().await;
        match frame["type"].as_str().unwrap() {
            "ai_response_chunk" => chunks.push(frame["data"]["delta"].as_str().unwrap().into()),
            "stop_generation" => stop_answer = Some(frame),
            "send_message" => break frame,
            other => panic!("unexpected {other}"),
        }
    };
    assert_eq!(stop_answer.unwrap()["data"]["stopped"], true);
    assert_eq!(answer["data"]["ai_response"]["stopped"], true);
    let partial = answer["data"]["ai_response"]["content"].as_str().unwrap();
    assert_eq!(partial, chunks.concat());
    assert!(partial.len() < long.len());
    let messages = app.messages(&token, &conversation).await;
    assert_eq!(messages[1]["content"], partial);
    assert_eq!(messages[1]["message_metadata"]["stopped"], true);
}

#[tokio::test]
async fn a_reply_is_stored_when_the_client_leaves_mid_stream() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm().script(Behaviour::reply_slowly(
        "one two three four five six",
        Duration::from_millis(30),
    ));
    let token = app.token("dave", &["user"]);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/dave?token={token}")).await;
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "bye"}}))
        .await;
    assert_eq!(ws.next_after_start().await["type"], "ai_response_chunk");
    drop(ws);

    app.replies_settled().await;
    let messages = app.messages(&token, &conversation).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["content"], "one two three four five six");
}

#[tokio::test]
async fn a_rate_limit_is_retried_and_the_reply_succeeds() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm().script(Behaviour::rate_limited(0));
    app.llm().script(Behaviour::reply("after the retry"));
    let mut ws = app.connect("/ws/chat").await;
    let conversation = ws.start().await;
    let (_, answer) = ws.chat(&conversation, "hi").await;
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["ai_response"]["content"], "after the retry");
    assert_eq!(app.llm().request_count(), 2);
}

#[tokio::test]
async fn a_permanent_llm_failure_keeps_the_user_message_and_the_connection() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm().set_fallback(Behaviour::server_error());
    let token = app.token("erin", &["user"]);
    let mut ws = app.connect(&format!("/ws/chat/erin?token={token}")).await;
    let conversation = ws.start().await;
    let (chunks, answer) = ws.chat(&conversation, "anyone?").await;
    assert!(chunks.is_empty());
    assert_eq!(answer["success"], false);
    let error = answer["error"].as_str().unwrap();
    assert!(!error.is_empty());
    assert!(!error.contains(RAW_ERROR_MARKER), "{error}");
    assert!(!error.contains("sk-"), "{error}");

    let messages = app.messages(&token, &conversation).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["content"], "anyone?");
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next().await["type"], "pong");
}

#[tokio::test]
async fn upgrades_without_the_right_token_are_refused() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|settings| settings.allow_anonymous_ws = false),
    )
    .await;
    let alice = app.token("alice", &["user"]);
    let bob = app.token("bob", &["user"]);
    let forged = sign_with(
        jsonwebtoken::Algorithm::HS256,
        "other-secret",
        &json!({ "sub": "alice", "roles": [], "exp": now() + 60 }),
    );
    assert_eq!(app.refused_status("/ws/chat/alice").await, 401);
    assert_eq!(
        app.refused_status("/ws/chat/alice?token=garbage").await,
        401
    );
    assert_eq!(
        app.refused_status(&format!("/ws/chat/alice?token={forged}"))
            .await,
        401
    );
    assert_eq!(
        app.refused_status(&format!("/ws/chat/alice?token={bob}"))
            .await,
        403
    );
    assert_eq!(app.refused_status("/ws/chat").await, 403);

    let conversation = app.new_conversation(&alice).await;
    assert_eq!(
        app.refused_status(&format!("/ws/{conversation}?token={bob}"))
            .await,
        404
    );
    assert_eq!(app.refused_status("/ws/notanidatall?token=x").await, 401);
    assert_eq!(
        app.refused_status(&format!("/ws/notanidatall?token={alice}"))
            .await,
        404
    );
    // The right token works, by username or public ID.
    app.connect(&format!("/ws/chat/alice?token={alice}")).await;
    app.connect(&format!("/ws/{conversation}?token={alice}"))
        .await;
}

#[tokio::test]
async fn anonymous_connections_reach_only_their_own_conversations() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let token = app.token("frank", &["user"]);
    let owned = app.new_conversation(&token).await;
    let mut first = app.connect("/ws/chat").await;
    let theirs = first.start().await;
    let mut second = app.connect("/ws/chat").await;
    for target in [&owned, &theirs] {
        for frame in [
            json!({"type": "send_message", "data": {"conversation_id": target, "content": "x"}}),
            json!({"type": "end_conversation", "data": {"conversation_id": target}}),
            json!({"type": "stop_generation", "data": {"conversation_id": target}}),
        ] {
            second.send(frame.clone()).await;
            let answer = second.next().await;
            assert_eq!(answer["success"], false, "{frame} -> {answer}");
            assert_eq!(answer["error"], "Conversation not found");
        }
    }
    assert!(app.messages(&token, &owned).await.is_empty());
    // A user's connection cannot reach an anonymous conversation either.
    let mut user = app.connect(&format!("/ws/chat/frank?token={token}")).await;
    let (_, answer) = user.chat(&theirs, "hello").await;
    assert_eq!(answer["error"], "Conversation not found");
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_usable() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let mut ws = app.connect("/ws/chat").await;
    let cases = [
        ("not json", "error", "Invalid JSON"),
        ("[1,2]", "error", "A frame must be a JSON object"),
        (r#"{"data":{}}"#, "error", "Missing field: type"),
        (
            r#"{"type":"dance"}"#,
            "dance",
            "Unknown message type: dance",
        ),
        (
            r#"{"type":"send_message","data":{"content":"x"}}"#,
            "send_message",
            "Missing field: conversation_id",
        ),
        (
            r#"{"type":"send_message","data":{"conversation_id":"abc"}}"#,
            "send_message",
            "Missing field: content",
        ),
        (
            r#"{"type":"send_message","data":5}"#,
            "send_message",
            "Field `data` must be an object",
        ),
        (
            r#"{"type":"start_conversation","data":{"title":""}}"#,
            "start_conversation",
            "title: must not be empty",
        ),
        (
            r#"{"type":"start_conversation","data":{"model":"not-allowed"}}"#,
            "start_conversation",
            "model: is not one of the allowed models",
        ),
    ];
    for (text, kind, error) in cases {
        ws.send_text(text).await;
        let answer = ws.next().await;
        assert_eq!(answer["type"], kind, "{text}");
        assert_eq!(answer["success"], false, "{text}");
        assert_eq!(answer["error"], error, "{text}");
    }
    let conversation = ws.start().await;
    let (_, empty) = ws.chat(&conversation, "   ").await;
    assert_eq!(empty["error"], "content: must not be empty");
    let (_, answer) = ws.chat(&conversation, "finally").await;
    assert_eq!(answer["success"], true);
}

#[tokio::test]
async fn one_generation_at_a_time_per_conversation() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm().script(Behaviour::reply_slowly(
        "slow slow slow slow",
        Duration::from_millis(50),
    ));
    let mut ws = app.connect("/ws/chat").await;
    let conversation = ws.start().await;
    let send = json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "first"}});
    ws.send(send.clone()).await;
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "second"}}))
        .await;
    let mut refused = None;
    let mut done = None;
    while done.is_none() {
        let frame = ws.next().await;
        if frame["type"] == "send_message" && frame["success"] == false {
            refused = Some(frame);
        } else if frame["type"] == "send_message" {
            done = Some(frame);
        }
    }
    let refused = refused.expect("the second message was not refused");
    assert!(refused["error"]
        .as_str()
        .unwrap()
        .contains("already being generated"));
    assert_eq!(done.unwrap()["data"]["user_message"]["content"], "first");
}

#[tokio::test]
async fn oversize_frames_close_the_connection() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|settings| settings.limits.ws_max_frame_bytes = 1024),
    )
    .await;
    let mut ws = app.connect("/ws/chat").await;
    ws.send_text(&"x".repeat(4096)).await;
    assert!(ws.try_next().await.is_none());
}

#[tokio::test]
async fn idle_connections_are_pinged_and_dead_ones_closed() {
    let options = TestOptions::new().fake_llm().settings(|settings| {
        settings.limits.ws_ping_interval = Duration::from_millis(50);
        settings.limits.ws_idle_timeout = Duration::from_millis(300);
    });
    let app = spawn_app_with(options).await;
    let mut ws = app.connect("/ws/chat").await;
    // The client library answers pings while reading, so a client that keeps talking stays
    // open past the idle timeout...
    let deadline = tokio::time::Instant::now() + Duration::from_millis(600);
    let mut cadence = tokio::time::interval(Duration::from_millis(50));
    while cadence.tick().await < deadline {
        ws.send(json!({"type": "ping"})).await;
        assert_eq!(ws.next().await["type"], "pong");
    }
    drop(ws);
    // ...and one that goes silent (it reads nothing, so it answers no ping) is closed.
    let silent = app.connect("/ws/chat").await;
    wait_until("the server closed the silent connection", PATIENCE, || {
        app.state.hub.live.connection_count() == 0
    })
    .await;
    let mut socket = silent.socket;
    let mut closed = false;
    while let Ok(Some(message)) = tokio::time::timeout(
        Duration::from_secs(2),
        futures::StreamExt::next(&mut socket),
    )
    .await
    {
        if matches!(
            message,
            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_)
        ) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the idle connection was not closed");
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let mut ws = app.connect("/ws/chat").await;
    ws.send(json!({"type": "ping"})).await;
    ws.next().await;
    let closing = tokio::spawn(async move { ws.close_code().await });
    app.stop().await;
    assert_eq!(closing.await.unwrap(), Some(1001));
}

#[tokio::test]
async fn chat_over_websocket_records_analytics_events_and_metrics() {
    use crate::fake_analytics::Behaviour as Receiving;
    use crate::helpers::{CONVERSATION_PATH, MESSAGE_PATH};

    let options = TestOptions::new().fake_llm().analytics(Receiving::Accept);
    let app = spawn_app_with(options).await;
    let receiver = app.receiver().clone();
    app.llm().script(Behaviour::reply("counted reply"));
    let token = app.token("kate", &["user"]);
    let mut ws = app.connect(&format!("/ws/chat/kate?token={token}")).await;
    let conversation = ws.start().await;
    let created = receiver
        .wait_for_event(CONVERSATION_PATH, |b| b["action"] == "created")
        .await;
    assert_eq!(created.body["conversation_id"], conversation.as_str());

    let (_, answer) = ws.chat(&conversation, "count me").await;
    let reply = receiver
        .wait_for_event(MESSAGE_PATH, |b| b["role"] == "assistant")
        .await;
    assert_eq!(
        reply.body["message_id"],
        answer["data"]["ai_response"]["id"]
    );
    assert_eq!(reply.body["model_used"], crate::fake_llm::FAKE_MODEL);
    assert!(reply.body["token_count"].as_i64().unwrap() > 0);

    let metrics = app.scrape().await;
    for series in [
        "websocket_connections",
        "llm_request_duration_seconds_count",
        "llm_tokens_total",
    ] {
        assert!(metrics.has_series(series), "{series} missing from /metrics");
    }
    // One message event per exchange, the reply's, as the platform counts them: shutdown
    // flushes the queue, so everything sent has arrived.
    app.stop().await;
    let messages: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|event| event.path == MESSAGE_PATH)
        .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
}

#[tokio::test]
async fn a_user_may_run_only_so_many_generations_at_once() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|settings| settings.limits.max_generations_per_user = 1),
    )
    .await;
    app.llm().script(Behaviour::reply_slowly(
        "slow reply here",
        Duration::from_millis(100),
    ));
    let token = app.token("liam", &["user"]);
    let first = app.new_conversation(&token).await;
    let second = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/liam?token={token}")).await;
    ws.send(json!({"type": "send_message", "data": {"conversation_id": first, "content": "a"}}))
        .await;
    assert_eq!(ws.next_after_start().await["type"], "ai_response_chunk");
    // Another connection of the same user counts against the same limit.
    let mut other = app.connect(&format!("/ws/chat/liam?token={token}")).await;
    let (_, refused) = other.chat(&second, "b").await;
    assert_eq!(refused["success"], false);
    assert!(
        refused["error"].as_str().unwrap().contains("Too many"),
        "{refused}"
    );
    let (_, done) = ws.collect_reply().await;
    assert_eq!(done["success"], true);
    let (_, later) = other.chat(&second, "b again").await;
    assert_eq!(later["success"], true, "{later}");
}

#[tokio::test]
async fn sending_to_someone_elses_conversation_does_not_follow_it() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let alice = app.token("alice", &["user"]);
    let bob = app.token("bob", &["user"]);
    let conversation = app.new_conversation(&alice).await;
    let mut intruder = app.connect(&format!("/ws/chat/bob?token={bob}")).await;
    intruder
        .send(json!({"type": "send_message",
            "data": {"conversation_id": conversation, "content": "let me in"}}))
        .await;
    let refused = intruder.next().await;
    assert_eq!(refused["success"], false, "{refused}");
    intruder
        .send(json!({"type": "resume",
            "data": {"conversation_id": conversation, "after_seq": 0}}))
        .await;
    assert_eq!(intruder.next().await["success"], false);

    let mut owner = app.connect(&format!("/ws/chat/alice?token={alice}")).await;
    let (_, answer) = owner.chat(&conversation, "a secret").await;
    assert_eq!(answer["success"], true);
    // The intruder's next frame is the answer to its own ping: nothing of alice's reply.
    intruder.send(json!({"type": "ping"})).await;
    let next = intruder.next().await;
    assert_eq!(next["type"], "pong", "{next}");
}
