//! The first token does not wait for the disk: the LLM is asked while the user's message is
//! stored, and a message that cannot be stored cancels the request.

use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::fake_llm::Behaviour;
use crate::helpers::*;
use crate::test_database::TestDatabase;

#[tokio::test]
async fn a_user_message_that_cannot_be_stored_cancels_the_llm_request() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let app = spawn_app_with(TestOptions::new().database(database).fake_llm()).await;
    let token = app.token("nia", USER);
    let conversation = app.new_conversation(&token).await;
    // A fault in the database: writing a user message takes a while, then fails; reads
    // still work. The pause shows that the LLM is asked while the message is being stored.
    let mut admin = PgConnection::connect(&app.database_url()).await.unwrap();
    admin
        .execute(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN \
             PERFORM pg_sleep(0.3); RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_user_messages BEFORE INSERT ON messages \
             FOR EACH ROW WHEN (NEW.role = 'user') EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    app.llm().script(Behaviour::Hang);
    let mut ws = app.connect(&format!("/ws/chat/nia?token={token}")).await;
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "hello"}}))
        .await;
    let answer = loop {
        let frame = ws.next().await;
        if frame["type"] == "send_message" {
            break frame;
        }
        assert_eq!(
            frame["type"], "ai_response_start",
            "no chunk before the message is stored"
        );
    };
    assert_eq!(answer["success"], false);
    assert_eq!(answer["error"], "Internal error");
    // The request went out at once, and was cancelled when the message could not be stored.
    assert_eq!(app.llm().request_count(), 1);
    app.llm().abandoned(1).await;
    assert!(app.messages(&token, &conversation).await.is_empty());
}

#[tokio::test]
async fn the_user_message_is_in_the_history_sent_and_stored_before_the_reply() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let token = app.token("oda", USER);
    let conversation = app.new_conversation(&token).await;
    let mut ws = app.connect(&format!("/ws/chat/oda?token={token}")).await;
    let (_, first) = ws.chat(&conversation, "first question").await;
    assert_eq!(first["success"], true);
    let (_, second) = ws.chat(&conversation, "second question").await;
    assert_eq!(second["success"], true);
    let sent = app.llm().last_request().unwrap().body;
    let contents: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents.first(), Some(&"first question"));
    assert_eq!(contents.last(), Some(&"second question"));
    assert_eq!(
        contents.iter().filter(|c| **c == "second question").count(),
        1
    );
    let messages = app.messages(&token, &conversation).await;
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["user", "assistant", "user", "assistant"]);
    assert!(time(&messages[2]["timestamp"]) <= time(&messages[3]["timestamp"]));
}
