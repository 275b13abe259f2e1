//! `POST /api/v1/conversations/{id}/chat` in JSON and server-sent-event form.

use serde_json::{json, Value};

use crate::chat_support::spawn_chat_app;
use crate::fake_llm::{Behaviour, RAW_ERROR_MARKER};

#[tokio::test]
async fn chat_as_json_stores_and_returns_both_messages() {
    let app = spawn_chat_app(|_| {}).await;
    app.llm.script(Behaviour::reply("Fine, thanks."));
    let token = app.token("gina", &["user"]);
    let conversation = app.create_conversation(&token).await;
    let response = app
        .http
        .post(app.url(&format!("/api/v1/conversations/{conversation}/chat")))
        .bearer_auth(&token)
        .json(&json!({"content": "How are you?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
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
    let app = spawn_chat_app(|_| {}).await;
    app.llm.script(Behaviour::reply("streamed over sse"));
    let token = app.token("hank", &["user"]);
    let conversation = app.create_conversation(&token).await;
    let response = app
        .http
        .post(app.url(&format!("/api/v1/conversations/{conversation}/chat")))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .json(&json!({"content": "stream please"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let events = parse_sse(&text);
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
    let app = spawn_chat_app(|_| {}).await;
    app.llm.set_fallback(Behaviour::status(400));
    let owner = app.token("ivan", &["user"]);
    let other = app.token("judy", &["user"]);
    let conversation = app.create_conversation(&owner).await;
    let chat = |token: String, content: Value| {
        let request = app
            .http
            .post(app.url(&format!("/api/v1/conversations/{conversation}/chat")))
            .bearer_auth(token)
            .json(&content);
        async move { request.send().await.unwrap() }
    };
    assert_eq!(
        chat(other.clone(), json!({"content": "hi"})).await.status(),
        404
    );
    assert_eq!(
        chat(owner.clone(), json!({"content": ""})).await.status(),
        422
    );
    assert_eq!(
        chat(owner.clone(), json!({"text": "hi"})).await.status(),
        422
    );
    let failed = chat(owner.clone(), json!({"content": "hi"})).await;
    assert_eq!(failed.status(), 502);
    let detail = failed.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!detail.contains(RAW_ERROR_MARKER), "{detail}");
    // The user's message stays stored; nothing was stored for the other user.
    assert_eq!(app.messages(&owner, &conversation).await.len(), 1);
}

fn parse_sse(text: &str) -> Vec<(String, Value)> {
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
