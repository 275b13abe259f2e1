//! A turn starts from the context its conversation's previous turn kept, asks the LLM at
//! once, and checks that context against the database before any chunk goes out: whatever
//! changed elsewhere (a message stored over REST, tools registered, another instance
//! ending or deleting the conversation) is what the LLM answers, and nothing is stored where it may not.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fake_mcp::FakeMcp;
use crate::helpers::*;

const REPLY: &str = "Hello from the fake LLM";

/// The contents of a recorded request's messages.
fn contents(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Two instances on one database, each with its own fake LLM.
async fn two_instances() -> (TestApp, TestApp) {
    let a = spawn_app_with(TestOptions::new().fake_llm()).await;
    let b = spawn_app_with(
        TestOptions::new()
            .shared_database(&a.database_url())
            .fake_llm(),
    )
    .await;
    (a, b)
}

#[tokio::test]
async fn a_message_stored_behind_the_kept_context_reaches_the_llm() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let token = app.token("ama", USER);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/ama?token={token}")).await;
    ws.chat(&conversation, "first").await;
    // Stored without a turn, so the kept context does not have it.
    app.add_message(
        &token,
        &conversation,
        &json!({"role": "user", "content": "posted"}),
    )
    .await;
    let before = app.llm().request_count();

    let (chunks, answer) = ws.chat(&conversation, "second").await;

    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(
        chunks.concat(),
        REPLY,
        "one reply, from the request asked again"
    );
    let requests = app.llm().requests();
    assert_eq!(
        requests.len(),
        before + 2,
        "the kept context was asked, then the read one"
    );
    assert_eq!(
        contents(&requests[before].body),
        ["first", REPLY, "second"],
        "the kept context"
    );
    assert_eq!(
        contents(&requests[before + 1].body),
        ["first", REPLY, "posted", "second"]
    );
    let stored: Vec<Value> = app.messages(&token, &conversation).await;
    let stored: Vec<&str> = stored
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["first", REPLY, "posted", "second", REPLY]);

    // The next turn starts from the context this one kept: one request.
    let before = app.llm().request_count();
    ws.chat(&conversation, "third").await;
    assert_eq!(app.llm().request_count(), before + 1);
    assert_eq!(
        contents(&app.llm().last_request().unwrap().body),
        ["first", REPLY, "posted", "second", REPLY, "third"]
    );
}

#[tokio::test]
async fn a_conversation_ended_on_another_instance_takes_no_message() {
    let (a, b) = two_instances().await;
    let token = a.token("ben", USER);
    let conversation = a.new_conversation(&token).await;
    let mut ws = a.connect(&format!("/ws/chat/ben?token={token}")).await;
    ws.chat(&conversation, "first").await;
    let ended = b
        .post(
            &format!("/api/v1/users/me/conversations/{conversation}/end"),
            &token,
        )
        .await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.text);

    let (chunks, answer) = ws.chat(&conversation, "too late").await;
    assert_eq!(answer["success"], false, "{answer}");
    assert_eq!(
        answer["error"],
        "Conversation has ended; reconnect to continue it"
    );
    assert!(chunks.is_empty());
    let refused = a.chat(&token, &conversation, "too late again").await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert_eq!(a.messages(&token, &conversation).await.len(), 2);
}

#[tokio::test]
async fn a_conversation_deleted_on_another_instance_is_not_found() {
    let (a, b) = two_instances().await;
    let token = a.token("cai", USER);
    let conversation = a.new_conversation(&token).await;
    a.chat(&token, &conversation, "first").await;
    let deleted = b
        .delete(
            &format!("/api/v1/users/me/conversations/{conversation}"),
            &token,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);

    let gone = a.chat(&token, &conversation, "anyone there?").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);
    let mut ws = a.connect(&format!("/ws/chat/cai?token={token}")).await;
    let (chunks, answer) = ws.chat(&conversation, "hello?").await;
    assert_eq!(answer["success"], false, "{answer}");
    assert_eq!(answer["error"], "Conversation not found");
    assert!(chunks.is_empty());
}

#[tokio::test]
async fn tools_registered_since_the_kept_context_are_offered() {
    let mcp = FakeMcp::start_rmcp().await;
    let authority = mcp.authority();
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(move |s| s.mcp.allowed_hosts = vec![authority]),
    )
    .await;
    let token = app.token("dov", USER);
    let conversation = app.new_conversation(&token).await;
    assert_eq!(
        app.chat(&token, &conversation, "first").await.status,
        StatusCode::OK
    );
    let server = json!({"name": "time", "server_url": mcp.url()});
    let created = app.post_json("/api/v1/mcp-servers/", &token, &server).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let before = app.llm().request_count();

    let reply = app.chat(&token, &conversation, "second").await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let requests = app.llm().requests();
    assert_eq!(
        requests.len(),
        before + 2,
        "the kept context, then the read one"
    );
    assert!(requests[before].body.get("tools").is_none());
    let offered = requests[before + 1].body["tools"].to_string();
    assert!(offered.contains("get_current_time"), "{offered}");

    // With tools nothing is kept: the next turn reads first and asks once.
    let before = app.llm().request_count();
    let reply = app.chat(&token, &conversation, "third").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(app.llm().request_count(), before + 1);
}

#[tokio::test]
async fn a_long_conversation_is_predicted_right_past_its_window() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.llm.context_token_budget = 1_000_000),
    )
    .await;
    let token = app.token("eli", USER);
    let conversation = app.new_conversation(&token).await;
    // 110 exchanges: 220 messages, past the 200 a turn reads.
    for i in 0..110 {
        let reply = app.chat(&token, &conversation, &format!("m{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    assert_eq!(
        app.llm().request_count(),
        110,
        "every turn asked once: no kept context was found stale"
    );
    let asked = contents(&app.llm().last_request().unwrap().body);
    let mut expected: Vec<String> = (9..109)
        .flat_map(|i| [format!("m{i}"), REPLY.to_owned()])
        .collect();
    expected.push("m109".to_owned());
    assert_eq!(asked, expected, "the newest 200 messages and the new one");
}
