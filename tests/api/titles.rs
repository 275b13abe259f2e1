//! Titles that write themselves: after a conversation's first reply, the LLM names a
//! conversation still called "New Conversation"; the members are told; a title of the user's
//! is never replaced; a failing or slow title request changes nothing and delays nothing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_llm::{Behaviour, FAKE_MODEL};
use crate::helpers::*;
use crate::live::two_instances;
use crate::test_database::TestDatabase;
use crate::ws_client::WsClient;

const DEFAULT_TITLE: &str = "New Conversation";

/// An app on `database` with the fake LLM and titles on.
async fn titling_app(
    database: TestDatabase,
    change: impl FnOnce(&mut Settings) + Send + 'static,
) -> TestApp {
    spawn_app_with(
        TestOptions::new()
            .database(database)
            .fake_llm()
            .settings(|s| s.titles.auto_title = true)
            .settings(change),
    )
    .await
}

/// A conversation with the default title; its public ID.
async fn untitled(app: &TestApp, token: &str) -> String {
    let created = app.create_conversation(token, &json!({})).await;
    assert_eq!(created["title"], DEFAULT_TITLE, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

async fn title_of(app: &TestApp, token: &str, conversation: &str) -> String {
    let found = app
        .get(&format!("/api/v1/conversations/{conversation}"), token)
        .await
        .assert_status(200)
        .json();
    found["title"].as_str().unwrap().to_owned()
}

/// A WebSocket bound to the conversation, following it like another tab of its owner.
async fn member(app: &TestApp, token: &str, conversation: &str) -> WsClient {
    let mut ws = app
        .connect(&format!("/ws/{conversation}?token={token}"))
        .await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next().await["type"], "pong");
    ws
}

/// Checks that nothing but the answer to a ping is waiting on the socket: no title frame.
async fn nothing_more(ws: &mut WsClient) {
    ws.send(json!({"type": "ping"})).await;
    let frame = ws.next().await;
    assert_eq!(frame["type"], "pong", "{frame}");
}

async fn replaces_the_default_title_and_tells_the_members(database: TestDatabase) {
    let app = titling_app(database, |_| {}).await;
    let token = app.token("tia", USER);
    let conversation = untitled(&app, &token).await;
    let mut watcher = member(&app, &token, &conversation).await;

    app.llm()
        .script(Behaviour::reply("Knead, rest, bake at 230 degrees."));
    app.llm().script(Behaviour::reply(
        "Title: \"Baking Bread at Home.\"\nMore text",
    ));
    let answer = app
        .chat(&token, &conversation, "How do I bake bread at home?")
        .await
        .assert_status(200)
        .json();
    assert_eq!(
        answer["ai_response"]["content"],
        "Knead, rest, bake at 230 degrees."
    );

    let (_, broadcast) = watcher.collect_broadcast().await;
    assert_eq!(broadcast["data"]["conversation_id"], conversation.as_str());
    let updated = watcher.next().await;
    assert_eq!(
        updated,
        json!({"type": "conversation_updated",
            "data": {"conversation_id": conversation, "title": "Baking Bread at Home"}})
    );
    assert_eq!(
        title_of(&app, &token, &conversation).await,
        "Baking Bread at Home"
    );

    // The title was asked of the conversation's model, from the first exchange, briefly.
    let requests = app.llm().requests();
    assert_eq!(requests.len(), 2);
    let asked = &requests[1].body;
    assert_eq!(asked["model"], FAKE_MODEL);
    assert_eq!(asked["max_tokens"], 48);
    assert!(asked.get("tools").is_none_or(Value::is_null), "{asked}");
    let messages = asked["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[1]["content"], "How do I bake bread at home?");
    assert_eq!(messages[2]["content"], "Knead, rest, bake at 230 degrees.");

    // Only the first reply: a second one asks nothing more.
    app.llm().script(Behaviour::reply("Rye takes longer."));
    app.chat(&token, &conversation, "And rye?")
        .await
        .assert_status(200);
    app.replies_settled().await;
    assert_eq!(app.llm().request_count(), 3);
    watcher.collect_broadcast().await;
    nothing_more(&mut watcher).await;
}

#[tokio::test]
async fn the_default_title_is_replaced_and_members_told_on_sqlite() {
    replaces_the_default_title_and_tells_the_members(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn the_default_title_is_replaced_and_members_told_on_postgres() {
    if let Some(database) = TestDatabase::postgres().await {
        replaces_the_default_title_and_tells_the_members(database).await;
    }
}

#[tokio::test]
async fn a_title_given_before_is_kept_and_no_title_is_asked() {
    let app = titling_app(TestDatabase::sqlite(), |_| {}).await;
    let token = app.token("tib", USER);
    let mine = app.new_conversation(&token).await;
    app.llm().script(Behaviour::reply("An answer."));
    app.chat(&token, &mine, "A question?")
        .await
        .assert_status(200);
    app.replies_settled().await;
    assert_eq!(app.llm().request_count(), 1);
    assert_eq!(title_of(&app, &token, &mine).await, "chat");
}

async fn a_title_set_while_it_is_written_wins(database: TestDatabase) {
    let app = titling_app(database, |_| {}).await;
    let token = app.token("tic", USER);
    let conversation = untitled(&app, &token).await;
    let mut watcher = member(&app, &token, &conversation).await;
    app.llm().script(Behaviour::reply("Sure."));
    let (held, release) = Behaviour::held("Generated Title");
    app.llm().script(held);

    app.chat(&token, &conversation, "Plan my trip")
        .await
        .assert_status(200);
    watcher.collect_broadcast().await;
    // The title request is in, and held: the user renames meanwhile.
    wait_until("the title request", PATIENCE, || {
        app.llm().request_count() == 2
    })
    .await;
    app.patch_json(
        &format!("/api/v1/users/me/conversations/{conversation}"),
        &token,
        &json!({"title": "Lisbon in May"}),
    )
    .await
    .assert_status(200);
    release.notify_one();
    app.replies_settled().await;

    assert_eq!(title_of(&app, &token, &conversation).await, "Lisbon in May");
    nothing_more(&mut watcher).await;
}

#[tokio::test]
async fn a_title_set_while_it_is_written_wins_on_sqlite() {
    a_title_set_while_it_is_written_wins(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn a_title_set_while_it_is_written_wins_on_postgres() {
    if let Some(database) = TestDatabase::postgres().await {
        a_title_set_while_it_is_written_wins(database).await;
    }
}

#[tokio::test]
async fn a_failing_title_request_leaves_the_title() {
    let app = titling_app(TestDatabase::sqlite(), |_| {}).await;
    let token = app.token("tid", USER);
    let conversation = untitled(&app, &token).await;
    let mut watcher = member(&app, &token, &conversation).await;
    app.llm().script(Behaviour::reply("Fine."));
    app.llm().set_fallback(Behaviour::server_error());

    app.chat(&token, &conversation, "Hello")
        .await
        .assert_status(200);
    watcher.collect_broadcast().await;
    app.replies_settled().await;
    // The title request was made (and retried), and failed.
    assert!(app.llm().request_count() >= 2);
    assert_eq!(title_of(&app, &token, &conversation).await, DEFAULT_TITLE);
    nothing_more(&mut watcher).await;
}

#[tokio::test]
async fn a_slow_title_request_is_bounded_and_delays_no_answer() {
    let app = titling_app(TestDatabase::sqlite(), |s| {
        s.llm.timeout = Duration::from_secs(1);
    })
    .await;
    let token = app.token("tie", USER);
    let me = app.my_id(&token).await;
    let conversation = untitled(&app, &token).await;
    let mut ws = app.connect(&format!("/ws/chat/{me}?token={token}")).await;
    app.llm().script(Behaviour::reply("Quick answer."));
    app.llm().script(Behaviour::hang());

    let (_, answer) = ws.chat(&conversation, "Hi there").await;
    assert_eq!(answer["success"], true, "{answer}");
    // The title request is given up after OPENAI_TIMEOUT_SECONDS, its connection closed.
    app.llm().abandoned(1).await;
    app.replies_settled().await;
    assert_eq!(app.llm().request_count(), 2);
    assert_eq!(title_of(&app, &token, &conversation).await, DEFAULT_TITLE);
    nothing_more(&mut ws).await;
}

#[tokio::test]
async fn the_answer_comes_before_the_title_is_written() {
    let app = titling_app(TestDatabase::sqlite(), |_| {}).await;
    let token = app.token("tif", USER);
    let me = app.my_id(&token).await;
    let conversation = untitled(&app, &token).await;
    let mut ws = app.connect(&format!("/ws/chat/{me}?token={token}")).await;
    app.llm().script(Behaviour::reply("The answer."));
    let (held, release) = Behaviour::held("Held Title");
    app.llm().script(held);

    // The whole answer arrives while the title request is still held.
    let (_, answer) = ws.chat(&conversation, "Question").await;
    assert_eq!(answer["data"]["ai_response"]["content"], "The answer.");
    wait_until("the title request", PATIENCE, || {
        app.llm().request_count() == 2
    })
    .await;
    assert_eq!(title_of(&app, &token, &conversation).await, DEFAULT_TITLE);
    release.notify_one();
    // The connection that asked follows the conversation, so it is told too.
    let updated = ws.next().await;
    assert_eq!(updated["type"], "conversation_updated", "{updated}");
    assert_eq!(updated["data"]["title"], "Held Title");
}

#[tokio::test]
async fn the_offline_provider_titles_with_the_first_words() {
    let app = spawn_app_with(TestOptions::new().settings(|s| s.titles.auto_title = true)).await;
    // An anonymous conversation: titled within its own (ownerless) scope.
    let mut ws = app.connect("/ws/chat").await;
    ws.send(json!({"type": "start_conversation", "data": {}}))
        .await;
    let started = ws.next().await;
    assert_eq!(started["data"]["title"], DEFAULT_TITLE, "{started}");
    let conversation = started["data"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, answer) = ws
        .chat(&conversation, "  how do I bake bread at home quickly?")
        .await;
    assert_eq!(answer["success"], true, "{answer}");
    let updated = ws.next().await;
    assert_eq!(
        updated,
        json!({"type": "conversation_updated",
            "data": {"conversation_id": conversation, "title": "how do I bake bread at"}})
    );
}

#[tokio::test]
async fn no_title_is_written_with_auto_title_off() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.titles.auto_title = false),
    )
    .await;
    let token = app.token("tig", USER);
    let conversation = untitled(&app, &token).await;
    let mut watcher = member(&app, &token, &conversation).await;
    app.chat(&token, &conversation, "Hello")
        .await
        .assert_status(200);
    watcher.collect_broadcast().await;
    app.replies_settled().await;
    assert_eq!(app.llm().request_count(), 1);
    assert_eq!(title_of(&app, &token, &conversation).await, DEFAULT_TITLE);
    nothing_more(&mut watcher).await;
}

#[tokio::test]
async fn the_title_reaches_members_on_other_instances() {
    let Some((a, b)) = two_instances(|s| s.titles.auto_title = true).await else {
        return;
    };
    let token = a.token("tih", USER);
    let conversation = untitled(&a, &token).await;
    let mut watcher = member(&b, &token, &conversation).await;
    a.llm().script(Behaviour::reply("Across."));
    a.llm().script(Behaviour::reply("Fleet Title"));
    a.chat(&token, &conversation, "Hello fleet")
        .await
        .assert_status(200);
    watcher.collect_broadcast().await;
    let updated = watcher.next().await;
    assert_eq!(updated["type"], "conversation_updated", "{updated}");
    assert_eq!(updated["data"]["title"], "Fleet Title");
    assert_eq!(title_of(&b, &token, &conversation).await, "Fleet Title");
}
