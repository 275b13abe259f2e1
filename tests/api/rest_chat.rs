//! `POST /api/v1/conversations/{id}/chat` in JSON and server-sent-event form.

use serde_json::{json, Value};

use crate::fake_llm::{Behaviour, RAW_ERROR_MARKER};
use crate::helpers::{spawn_app_with, TestOptions};

#[tokio::test]
async fn chat_as_json_stores_and_returns_both_messages() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm().script(Behaviour::reply("Fine, thanks."));
    let token = app.token("gina", &["user"]);
    let conversation = app.new_conversation(&token).await;
    let body = app
        .chat(&token, &conversation, "How are you?")
        .await
        .assert_status(200)
        .json();
    assert_eq!(body["conversation_id"], conversation.as_str());
    assert_eq!(body["user_message"]["role"], "user");
    assert_eq!(body["user_message"]["content"], "How are you?");
    assert_eq!(body["ai_response"]["role"], "assistant");
    assert_eq!(body["ai_response"]["content"], "Fine, thanks.");
    let messages = app.messages(&token, &conversation).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["id"], body["ai_response"]["id"]);
}

#[tokio::test]
async fn chat_as_sse_streams_chunks_then_done() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm().script(Behaviour::reply("streamed over sse"));
    let token = app.token("hank", &["user"]);
    let conversation = app.new_conversation(&token).await;
    let response = app
        .chat_stream(&token, &conversation, "stream please")
        .await;
    response.assert_status(200);
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = parse_sse(&response.text);
    let chunks: String = events
        .iter()
        .filter(|(name, _)| name == "chunk")
        .map(|(_, data)| data["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(chunks, "streamed over sse");
    let (last_name, last) = events.last().unwrap();
    assert_eq!(last_name, "done");
    assert_eq!(last["ai_response"]["content"], "streamed over sse");
}

#[tokio::test]
async fn chat_errors_are_clear_and_scoped() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm().set_fallback(Behaviour::status(400));
    let owner = app.token("ivan", &["user"]);
    let other = app.token("judy", &["user"]);
    let conversation = app.new_conversation(&owner).await;
    let path = format!("/api/v1/conversations/{conversation}/chat");
    let hi = json!({"content": "hi"});
    assert_eq!(app.post_json(&path, &other, &hi).await.status, 404);
    let empty = json!({"content": ""});
    assert_eq!(app.post_json(&path, &owner, &empty).await.status, 422);
    let misnamed = json!({"text": "hi"});
    assert_eq!(app.post_json(&path, &owner, &misnamed).await.status, 422);
    let failed = app.post_json(&path, &owner, &hi).await;
    assert_eq!(failed.status, 502);
    let detail = failed.detail();
    assert!(!detail.contains(RAW_ERROR_MARKER), "{detail}");
    // The user's message stays stored; nothing was stored for the other user.
    assert_eq!(app.messages(&owner, &conversation).await.len(), 1);
}

pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str(v.trim()).unwrap());
                }
            }
            Some((name?, data?))
        })
        .collect()
}
