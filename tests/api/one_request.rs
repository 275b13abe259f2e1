//! One LLM request per turn, whatever instance ran the turn before and whatever was stored
//! in between; the caller's own answer never depends on the broadcast keeping up.

use serde_json::{json, Value};

use crate::fake_llm::Behaviour;
use crate::helpers::*;
use crate::live::two_instances;
use crate::ws_client::WsClient;

/// The user messages of an LLM request, in order.
fn user_messages(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends a message and reads this connection's frames until its `send_message` answer,
/// passing over what other connections' turns broadcast.
async fn ws_turn(ws: &mut WsClient, conversation: &str, content: &str) -> Value {
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": content}}))
        .await;
    loop {
        let frame = ws.next().await;
        if frame["type"] == "send_message" {
            assert_eq!(frame["success"], true, "{frame}");
            return frame;
        }
    }
}

#[tokio::test]
async fn every_turn_asks_the_llm_once_on_whichever_instance_it_runs() {
    let Some((a, b)) = two_instances(|_| {}).await else {
        return;
    };
    let token = a.token("tess", USER);
    let conversation = a.new_conversation(&token).await;
    let mut said: Vec<String> = Vec::new();
    for turn in 0..8 {
        let content = format!("turn {turn}");
        let (app, other) = if turn % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let before = (app.llm().request_count(), other.llm().request_count());
        if turn == 5 {
            // A message stored over REST between two turns reaches the next one.
            other
                .say(&token, &conversation, "user", "stored aside")
                .await;
            said.push("stored aside".to_owned());
        }
        match turn % 4 {
            0 => {
                let path = format!("/ws/chat/tess?token={token}");
                ws_turn(&mut app.connect(&path).await, &conversation, &content).await;
            }
            1 => {
                app.chat(&token, &conversation, &content)
                    .await
                    .assert_status(200);
            }
            2 => {
                let body = app.chat_stream(&token, &conversation, &content).await;
                assert!(body.text.contains("event: done"), "{}", body.text);
            }
            _ => {
                let path = format!("/ws/{conversation}?token={token}");
                ws_turn(&mut app.connect(&path).await, &conversation, &content).await;
            }
        }
        said.push(content);
        let after = (app.llm().request_count(), other.llm().request_count());
        assert_eq!(
            after,
            (before.0 + 1, before.1),
            "turn {turn} asked the LLM other than once"
        );
        let request = app.llm().last_request().expect("a request").body;
        assert_eq!(user_messages(&request), said, "turn {turn}");
    }
    assert_eq!(a.messages(&token, &conversation).await.len(), 17);
}

#[tokio::test]
async fn a_rest_chat_answers_a_reply_of_ten_thousand_chunks() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let text: String = (1..=10_000).map(|i| format!("w{i} ")).collect();
    app.llm().script(Behaviour::reply(&text));
    let token = app.token("tom", USER);
    let conversation = app.new_conversation(&token).await;
    let answer = app.chat(&token, &conversation, "talk a lot").await;
    answer.assert_status(200);
    assert_eq!(answer.json()["ai_response"]["content"], text.as_str());
}

#[tokio::test]
async fn refusals_name_the_conversation_and_failed_replies_their_generation() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm().set_fallback(Behaviour::server_error());
    let token = app.token("una", USER);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/una?token={token}")).await;

    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "  "}}))
        .await;
    let refused = ws.next().await;
    assert_eq!(refused["success"], false, "{refused}");
    assert_eq!(refused["data"]["conversation_id"], conversation.as_str());

    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "fail please"}}))
        .await;
    let started = ws.next().await;
    assert_eq!(started["type"], "ai_response_start", "{started}");
    let failed = ws.next().await;
    assert_eq!(failed["type"], "send_message", "{failed}");
    assert_eq!(failed["success"], false);
    assert_eq!(failed["data"]["conversation_id"], conversation.as_str());
    assert_eq!(
        failed["data"]["generation_id"],
        started["data"]["generation_id"]
    );

    ws.send(json!({"type": "stop_generation", "data": {"conversation_id": "nope"}}))
        .await;
    let unknown = ws.next().await;
    assert_eq!(unknown["type"], "stop_generation");
    assert_eq!(unknown["success"], false);
    assert_eq!(unknown["data"]["conversation_id"], "nope");
}
