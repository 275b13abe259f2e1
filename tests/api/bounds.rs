//! Replies that hold under faults and abuse: bounded size and time, slow clients, partial
//! replies, anonymous limits, close codes and origins.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_llm::Behaviour;
use crate::helpers::*;
use crate::service_process::ChatProcess;

fn endless(piece_bytes: usize) -> Behaviour {
    Behaviour::Endless {
        piece: "x".repeat(piece_bytes),
    }
}

fn last_reply(messages: &[Value]) -> &Value {
    messages.last().expect("a stored reply")
}

#[tokio::test]
async fn an_endless_reply_is_cut_at_the_size_limit_and_stored_truncated() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.llm.max_reply_chars = 5_000),
    )
    .await;
    app.llm().script(endless(700));
    let token = app.token("ivy", USER);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/ivy?token={token}")).await;
    let (chunks, answer) = ws.chat(&conversation, "never stop").await;
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["ai_response"]["truncated"], true);
    assert_eq!(chunks.concat().len(), 5_000);
    // Reading stopped: the upstream request was cancelled.
    app.llm().abandoned(1).await;
    let messages = app.messages(&token, &conversation).await;
    let reply = last_reply(&messages);
    assert_eq!(reply["content"].as_str().unwrap().chars().count(), 5_000);
    assert_eq!(reply["message_metadata"]["truncated"], true);
}

#[tokio::test]
async fn memory_stays_bounded_while_an_endless_reply_streams() {
    let child = ChatProcess::start().await;
    let baseline = child.warm_up().await;

    child.llm.script(endless(16 * 1024));
    let answer: Value = child.say("never stop").await.json().await.unwrap();
    let content = answer["ai_response"]["content"].as_str().unwrap();
    assert_eq!(
        content.chars().count(),
        100_000,
        "LLM_MAX_REPLY_CHARS by default"
    );
    assert_eq!(answer["ai_response"]["message_metadata"]["truncated"], true);
    child.llm.abandoned(1).await;
    let growth = child.peak_growth_kib(baseline);
    eprintln!("peak memory grew by {growth} KiB while the endless reply streamed");
    // Alone it grows by 3 to 6 MiB; beside other tests' load, threads and allocator pages
    // have added a few more. An unbounded reply would grow without end.
    assert!(growth < 16 * 1024, "peak memory grew by {growth} KiB");
}

#[tokio::test]
async fn a_client_that_never_reads_neither_holds_the_reply_nor_stays_connected() {
    let app = spawn_app_with(TestOptions::new().fake_llm().settings(|s| {
        s.llm.max_reply_chars = 10_000_000;
        s.limits.ws_send_timeout = Duration::from_millis(500);
    }))
    .await;
    let pieces = vec!["y".repeat(1024); 4_000];
    let expected = pieces.concat();
    app.llm().script(Behaviour::Reply {
        pieces,
        delay: Duration::ZERO,
    });
    let token = app.token("jon", USER);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/jon?token={token}")).await;
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "a lot please"}}))
        .await;
    // The client reads nothing from here on. The reply is generated and stored at the
    // LLM's pace all the same...
    wait_until("the reply starts", PATIENCE, || {
        app.llm().request_count() == 1
    })
    .await;
    app.replies_settled().await;
    let messages = app.messages(&token, &conversation).await;
    assert_eq!(
        last_reply(&messages)["content"].as_str().unwrap().len(),
        expected.len()
    );
    // ...and the connection that could not keep up is closed by the server.
    wait_until("the slow connection is closed", PATIENCE, || {
        app.state.hub.live.connection_count() == 0
    })
    .await;
    // What the client finally reads ends, with 1008 if the close frame got through at all.
    let mut code = None;
    while let Some(Ok(message)) = ws.next_message().await {
        if let tokio_tungstenite::tungstenite::Message::Close(frame) = message {
            code = frame.map(|f| u16::from(f.code));
        }
    }
    assert!(matches!(code, None | Some(1008)), "{code:?}");
}

#[tokio::test]
async fn a_long_reply_is_not_cut_by_the_first_token_timeout() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.llm.timeout = Duration::from_millis(400)),
    )
    .await;
    let text = "one two three four five six seven";
    app.llm()
        .script(Behaviour::reply_slowly(text, Duration::from_millis(200)));
    let token = app.token("kai", USER);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/kai?token={token}")).await;
    // 1.4 s of reply against a 0.4 s first-token timeout.
    let (_, answer) = ws.chat(&conversation, "take your time").await;
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["ai_response"]["content"], text);
    let messages = app.messages(&token, &conversation).await;
    assert_eq!(last_reply(&messages)["content"], text);
}

#[tokio::test]
async fn a_stream_that_goes_quiet_is_cut_and_its_partial_reply_stored() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.llm.stream_idle = Duration::from_millis(300)),
    )
    .await;
    app.llm().script(Behaviour::Reply {
        pieces: vec!["first ".into(), "second".into()],
        delay: Duration::from_millis(700),
    });
    let token = app.token("lea", USER);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/lea?token={token}")).await;
    let (chunks, failed) = ws.chat(&conversation, "hello?").await;
    assert_eq!(chunks, vec!["first "]);
    assert_eq!(failed["success"], false, "{failed}");
    let message_id = failed["data"]["message_id"]
        .as_str()
        .expect("the partial reply's id");
    let messages = app.messages(&token, &conversation).await;
    let reply = last_reply(&messages);
    assert_eq!(reply["id"], message_id);
    assert_eq!(reply["content"], "first ");
    assert_eq!(reply["message_metadata"]["incomplete"], true);
    assert!(reply["message_metadata"]["error"].is_string());
}

#[tokio::test]
async fn a_provider_failure_mid_stream_keeps_what_the_user_saw() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm()
        .script(Behaviour::drop_after("alpha beta gamma delta", 2));
    let token = app.token("mia", USER);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/mia?token={token}")).await;
    let (chunks, failed) = ws.chat(&conversation, "go").await;
    assert_eq!(chunks.concat(), "alpha beta ");
    assert_eq!(failed["success"], false);
    let error = failed["error"].as_str().unwrap();
    assert!(
        !error.contains(crate::fake_llm::RAW_ERROR_MARKER),
        "{error}"
    );
    let id = failed["data"]["message_id"].as_str().unwrap().to_owned();
    let messages = app.messages(&token, &conversation).await;
    let reply = last_reply(&messages);
    assert_eq!(reply["id"], id.as_str());
    assert_eq!(reply["content"], "alpha beta ");
    assert_eq!(reply["message_metadata"]["incomplete"], true);

    // The SSE route names the stored partial reply in its error event.
    app.llm().script(Behaviour::drop_after("one two three", 1));
    let streamed = app.chat_stream(&token, &conversation, "again").await;
    let error_event = streamed
        .text
        .split("\n\n")
        .find(|block| block.contains("event: error"))
        .expect("an error event");
    let data: Value = serde_json::from_str(
        error_event
            .lines()
            .find_map(|l| l.strip_prefix("data:"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let messages = app.messages(&token, &conversation).await;
    assert_eq!(data["message_id"], last_reply(&messages)["id"]);
    assert_eq!(last_reply(&messages)["content"], "one ");
}

#[tokio::test]
async fn anonymous_connections_per_address_are_capped() {
    let app =
        spawn_app_with(TestOptions::new().settings(|s| s.limits.anon_max_connections_per_ip = 2))
            .await;
    let first = app.connect("/ws/chat").await;
    let _second = app.connect("/ws/chat").await;
    assert_eq!(app.refused_status("/ws/chat").await, 429);
    // A place comes free when a connection goes.
    drop(first);
    wait_until("the first connection is gone", PATIENCE, || {
        app.state.hub.live.connection_count() == 1
    })
    .await;
    let _third = app.connect("/ws/chat").await;
    // Authenticated connections are not counted.
    let token = app.token("ned", USER);
    let _user = app.connect(&format!("/ws/chat/ned?token={token}")).await;
}

#[tokio::test]
async fn anonymous_generations_are_capped_all_together() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.limits.anon_max_generations = 1),
    )
    .await;
    app.llm().script(Behaviour::reply_slowly(
        &"slow ".repeat(50),
        Duration::from_millis(20),
    ));
    let mut one = app.connect("/ws/chat").await;
    let mut two = app.connect("/ws/chat").await;
    let first = one.start().await;
    let second = two.start().await;
    one.send(json!({"type": "send_message", "data": {"conversation_id": first, "content": "a"}}))
        .await;
    assert_eq!(one.next_after_start().await["type"], "ai_response_chunk");
    let (_, refused) = two.chat(&second, "b").await;
    assert_eq!(refused["success"], false);
    assert!(
        refused["error"].as_str().unwrap().contains("Too many"),
        "{refused}"
    );
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009_and_a_reason() {
    let app =
        spawn_app_with(TestOptions::new().settings(|s| s.limits.ws_max_frame_bytes = 1024)).await;
    let mut ws = app.connect("/ws/chat").await;
    ws.send_text(&"x".repeat(4096)).await;
    let (code, reason) = ws.close_frame().await.expect("a close frame");
    assert_eq!(code, 1009);
    assert!(reason.contains("1024"), "{reason}");
}

#[tokio::test]
async fn browser_upgrades_from_origins_not_allowed_are_refused() {
    let app = spawn_app_with(TestOptions::new().settings(|s| {
        s.limits.ws_allowed_origins = vec!["https://chat.example".to_owned()];
    }))
    .await;
    let token = app.token("ola", USER);
    let with_origin = |origin: &str| {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                app.ws_url(&format!("/ws/chat/ola?token={token}")),
            )
            .unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        request
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    assert!(
        tokio_tungstenite::connect_async(with_origin("https://chat.example"))
            .await
            .is_ok()
    );
    // Clients that send no Origin (not browsers) are unaffected.
    app.connect(&format!("/ws/chat/ola?token={token}")).await;
}
