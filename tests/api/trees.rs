//! Conversations as trees: regenerate and edit over REST, SSE and both WebSocket endpoints,
//! the LLM seeing exactly the active path, switching and deleting branches, the migration of
//! linear conversations, and every bad input, on SQLite and PostgreSQL.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_llm::Behaviour;
use crate::helpers::*;
use crate::live::{redis_url, slow_reply, two_instances_on};
use crate::rest_chat::parse_sse;
use crate::test_database::TestDatabase;
use crate::ws_client::WsClient;

/// Runs each named scenario once per backend, as `sqlite::name` and `postgres::name`, on a
/// server with the fake LLM.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let database = super::TestDatabase::sqlite();
                    super::$name(super::app_on(database).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(database) = super::TestDatabase::postgres().await {
                        super::$name(super::app_on(database).await).await;
                    }
                }
            )*
        }
    };
}

on_every_backend!(
    regenerate_edit_switch_and_delete_over_rest,
    regenerate_and_edit_stream_as_sse,
    regenerate_and_edit_over_both_websocket_endpoints,
    bad_input_is_refused_and_nothing_is_stored,
    others_message_ids_are_refused_everywhere,
    regenerate_and_send_at_once_one_wins,
    deleting_a_branch_stops_the_reply_generated_under_it,
    concurrent_stored_messages_form_one_chain,
);

async fn app_on(database: TestDatabase) -> TestApp {
    spawn_app_with(TestOptions::new().database(database).fake_llm()).await
}

fn messages_path(conversation: &str) -> String {
    format!("/api/v1/conversations/{conversation}/messages")
}

fn regenerate_path(conversation: &str, message: &str) -> String {
    format!("/api/v1/conversations/{conversation}/messages/{message}/regenerate")
}

fn edit_path(conversation: &str, message: &str) -> String {
    format!("/api/v1/conversations/{conversation}/messages/{message}/edit")
}

fn branch_path(conversation: &str) -> String {
    format!("/api/v1/conversations/{conversation}/branch")
}

/// Switches a conversation to the branch of `message`; answers the conversation.
async fn switch_to(app: &TestApp, token: &str, conversation: &str, message: &str) -> Value {
    let body = json!({ "message_id": message });
    app.put_json(&branch_path(conversation), token, &body)
        .await
        .assert_status(200)
        .json()
}

/// Every message of every branch, oldest first.
async fn tree(app: &TestApp, token: &str, conversation: &str) -> Vec<Value> {
    let path = format!("{}?view=tree", messages_path(conversation));
    let list = app.get(&path, token).await.assert_status(200).json();
    serde_json::from_value(list).expect("a JSON array")
}

/// The texts of the active path.
async fn path_texts(app: &TestApp, token: &str, conversation: &str) -> Vec<String> {
    texts(&app.messages(token, conversation).await)
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

/// The roles and texts the LLM was last asked with.
fn last_prompt(app: &TestApp) -> Vec<(String, String)> {
    let request = app.llm().last_request().expect("the LLM was asked");
    request.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            let role = m["role"].as_str().unwrap().to_owned();
            (role, m["content"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

fn prompt(turns: &[(&str, &str)]) -> Vec<(String, String)> {
    turns
        .iter()
        .map(|(role, content)| (role.to_string(), content.to_string()))
        .collect()
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

/// A conversation with a system message and two exchanges (`q1`/`a1`, `q2`/`a2`); returns
/// its ID and the answers of both chats.
async fn two_exchanges(app: &TestApp, token: &str) -> (String, Value, Value) {
    let conversation = app
        .create_conversation(
            token,
            &json!({"title": "tree", "system_message": "Be brief."}),
        )
        .await;
    let conversation = id(&conversation);
    app.llm().script(Behaviour::reply("a1"));
    let first = app.chat(token, &conversation, "q1").await;
    app.llm().script(Behaviour::reply("a2"));
    let second = app.chat(token, &conversation, "q2").await;
    (
        conversation,
        first.assert_status(200).json(),
        second.assert_status(200).json(),
    )
}

async fn regenerate_edit_switch_and_delete_over_rest(app: TestApp) {
    let token = app.token("tia", USER);
    let (conversation, first, second) = two_exchanges(&app, &token).await;
    let (q1, a1) = (id(&first["user_message"]), id(&first["ai_response"]));
    let (q2, a2) = (id(&second["user_message"]), id(&second["ai_response"]));

    // A linear log: each message's parent is the one before, one sibling each.
    let path = app.messages(&token, &conversation).await;
    assert_eq!(texts(&path), ["Be brief.", "q1", "a1", "q2", "a2"]);
    assert_eq!(path[0]["parent_id"], Value::Null);
    for pair in path.windows(2) {
        assert_eq!(pair[1]["parent_id"], pair[0]["id"], "{pair:?}");
        assert_eq!(pair[1]["sibling_ids"], json!([pair[1]["id"]]));
        assert_eq!(pair[1]["sibling_index"], 0);
    }

    // Regenerate: a sibling of a2 answering q2; the LLM sees the path up to q2, no more.
    app.llm().script(Behaviour::reply("a2 again"));
    let regenerated = app
        .post(&regenerate_path(&conversation, &a2), &token)
        .await
        .assert_status(200)
        .json();
    assert_eq!(regenerated["user_message"]["id"], q2.as_str());
    assert_eq!(regenerated["ai_response"]["content"], "a2 again");
    assert_eq!(regenerated["ai_response"]["parent_id"], q2.as_str());
    let a2b = id(&regenerated["ai_response"]);
    assert_eq!(
        last_prompt(&app),
        prompt(&[
            ("system", "Be brief."),
            ("user", "q1"),
            ("assistant", "a1"),
            ("user", "q2")
        ])
    );
    let path = app.messages(&token, &conversation).await;
    assert_eq!(texts(&path), ["Be brief.", "q1", "a1", "q2", "a2 again"]);
    assert_eq!(path[4]["sibling_ids"], json!([a2, a2b]));
    assert_eq!(path[4]["sibling_index"], 1);
    let shown = app
        .get(&format!("/api/v1/conversations/{conversation}"), &token)
        .await
        .json();
    assert_eq!(shown["current_message_id"], a2b.as_str());

    // Edit q1: a sibling with the new text, answered from the system message alone.
    app.llm().script(Behaviour::reply("a1 edited"));
    let edited = app
        .post_json(
            &edit_path(&conversation, &q1),
            &token,
            &json!({"content": "q1 better"}),
        )
        .await
        .assert_status(200)
        .json();
    assert_eq!(edited["user_message"]["content"], "q1 better");
    assert_eq!(edited["ai_response"]["content"], "a1 edited");
    assert_eq!(
        last_prompt(&app),
        prompt(&[("system", "Be brief."), ("user", "q1 better")])
    );
    let q1b = id(&edited["user_message"]);
    let path = app.messages(&token, &conversation).await;
    assert_eq!(texts(&path), ["Be brief.", "q1 better", "a1 edited"]);
    assert_eq!(path[1]["sibling_ids"], json!([q1, q1b]));
    assert_eq!(path[1]["sibling_index"], 1);
    assert_eq!(path[2]["sibling_ids"].as_array().unwrap().len(), 1);
    let all = tree(&app, &token, &conversation).await;
    assert_eq!(
        texts(&all),
        [
            "Be brief.",
            "q1",
            "a1",
            "q2",
            "a2",
            "a2 again",
            "q1 better",
            "a1 edited"
        ]
    );
    assert_eq!(all[5]["parent_id"], q2.as_str());
    assert_eq!(all[6]["parent_id"], all[0]["id"]);

    // Switch back to q1: its branch to its newest end.
    let switched = switch_to(&app, &token, &conversation, &q1).await;
    assert_eq!(switched["current_message_id"], a2b.as_str());
    assert_eq!(
        path_texts(&app, &token, &conversation).await,
        ["Be brief.", "q1", "a1", "q2", "a2 again"]
    );
    // A new message continues the active path, and the LLM sees exactly it.
    app.llm().script(Behaviour::reply("a3"));
    app.chat(&token, &conversation, "q3")
        .await
        .assert_status(200);
    assert_eq!(
        last_prompt(&app),
        prompt(&[
            ("system", "Be brief."),
            ("user", "q1"),
            ("assistant", "a1"),
            ("user", "q2"),
            ("assistant", "a2 again"),
            ("user", "q3"),
        ])
    );

    // Exports follow the active path; the JSON one with view=tree holds everything.
    let export = format!("/api/v1/users/me/conversations/{conversation}/export");
    let document = app.get(&export, &token).await.assert_status(200).json();
    assert_eq!(document["messages"].as_array().unwrap().len(), 7);
    let markdown = app
        .get(&format!("{export}?format=markdown"), &token)
        .await
        .assert_status(200)
        .text
        .clone();
    assert!(markdown.contains("a2 again") && !markdown.contains("q1 better"));
    let whole = app
        .get(&format!("{export}?view=tree"), &token)
        .await
        .assert_status(200)
        .json();
    assert_eq!(whole["messages"].as_array().unwrap().len(), 10);
    // A transcript follows the active path whatever the view.
    let transcript = app
        .get(&format!("{export}?format=markdown&view=tree"), &token)
        .await
        .assert_status(200)
        .text
        .clone();
    assert_eq!(transcript, markdown);

    // Delete q2's branch: the active leaf was in it, so it moves up to a1.
    app.delete(&format!("{}/{q2}", messages_path(&conversation)), &token)
        .await
        .assert_status(204);
    assert_eq!(
        path_texts(&app, &token, &conversation).await,
        ["Be brief.", "q1", "a1"]
    );
    let shown = app
        .get(&format!("/api/v1/conversations/{conversation}"), &token)
        .await
        .json();
    assert_eq!(shown["current_message_id"], a1.as_str());
    assert_eq!(tree(&app, &token, &conversation).await.len(), 5);
    // Deleting a branch beside the active path leaves the active leaf where it is.
    app.delete(&format!("{}/{q1b}", messages_path(&conversation)), &token)
        .await
        .assert_status(204);
    assert_eq!(tree(&app, &token, &conversation).await.len(), 3);
    assert_eq!(
        path_texts(&app, &token, &conversation).await,
        ["Be brief.", "q1", "a1"]
    );
}

/// POSTs `body` to `path` asking for server-sent events.
async fn post_sse(app: &TestApp, path: &str, token: &str, body: Option<Value>) -> TestResponse {
    let mut request = app
        .request(reqwest::Method::POST, path)
        .bearer_auth(token)
        .header(reqwest::header::ACCEPT, "text/event-stream");
    if let Some(body) = body {
        request = request.json(&body);
    }
    app.send(request).await
}

async fn regenerate_and_edit_stream_as_sse(app: TestApp) {
    let token = app.token("sia", USER);
    let (conversation, first, second) = two_exchanges(&app, &token).await;
    let a2 = id(&second["ai_response"]);
    app.llm().script(Behaviour::reply("streamed again"));
    let response = post_sse(&app, &regenerate_path(&conversation, &a2), &token, None).await;
    response.assert_status(200);
    let events = parse_sse(&response.text);
    let chunks: String = events
        .iter()
        .filter(|(name, _)| name == "chunk")
        .map(|(_, data)| data["delta"].as_str().unwrap())
        .collect();
    assert_eq!(chunks, "streamed again");
    let (name, done) = events.last().unwrap();
    assert_eq!(name, "done");
    assert_eq!(done["ai_response"]["content"], "streamed again");
    assert_eq!(done["user_message"]["id"], second["user_message"]["id"]);

    let q1 = id(&first["user_message"]);
    app.llm().script(Behaviour::reply("edited over sse"));
    let body = json!({"content": "q1, edited"});
    let response = post_sse(&app, &edit_path(&conversation, &q1), &token, Some(body)).await;
    response.assert_status(200);
    let (name, done) = parse_sse(&response.text).pop().unwrap();
    assert_eq!(name, "done");
    assert_eq!(done["user_message"]["content"], "q1, edited");
    assert_eq!(done["ai_response"]["content"], "edited over sse");
    assert_eq!(
        path_texts(&app, &token, &conversation).await,
        ["Be brief.", "q1, edited", "edited over sse"]
    );
}

/// Reads frames until one of type `kind`, skipping the reply's start and chunks.
async fn answer_of(ws: &mut WsClient, kind: &str) -> Value {
    loop {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("ai_response_start") | Some("ai_response_chunk") => {}
            Some(found) if found == kind => return frame,
            _ => panic!("unexpected frame while waiting for {kind}: {frame}"),
        }
    }
}

/// Reads frames until one of type `kind`, skipping anything else.
async fn frame_of(ws: &mut WsClient, kind: &str) -> Value {
    loop {
        let frame = ws.next().await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn regenerate_and_edit_over_both_websocket_endpoints(app: TestApp) {
    let token = app.token("wes", USER);
    let conversation = app.new_conversation(&token).await;
    let mut user_ws = app.connect(&format!("/ws/chat/wes?token={token}")).await;
    let mut bound_ws = app
        .connect(&format!("/ws/{conversation}?token={token}"))
        .await;
    // An answer proves the bound connection follows the conversation.
    bound_ws.send(json!({"type": "ping"})).await;
    bound_ws.next().await;

    app.llm().script(Behaviour::reply("first answer"));
    let (_, sent) = user_ws.chat(&conversation, "hello").await;
    bound_ws.collect_broadcast().await;
    let hello = sent["data"]["user_message"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Regenerate on the user's endpoint: the newest reply when none is named.
    app.llm().script(Behaviour::reply("second answer"));
    user_ws
        .send(json!({"type": "regenerate", "data": {"conversation_id": conversation}}))
        .await;
    let (chunks, regenerated) = user_ws.collect_until("regenerate").await;
    assert_eq!(chunks.concat(), "second answer");
    assert_eq!(regenerated["success"], true, "{regenerated}");
    assert_eq!(regenerated["data"]["user_message"]["id"], hello.as_str());
    assert_eq!(
        regenerated["data"]["ai_response"]["content"],
        "second answer"
    );
    // The other member gets the reply as a broadcast.
    let (_, broadcast) = bound_ws.collect_broadcast().await;
    assert_eq!(broadcast["data"], regenerated["data"]);

    // Regenerate on the conversation's endpoint, naming the first reply.
    let first = sent["data"]["ai_response"]["id"].as_str().unwrap();
    app.llm().script(Behaviour::reply("third answer"));
    bound_ws
        .send(json!({"type": "regenerate", "data": {"message_id": first}}))
        .await;
    let regenerated = answer_of(&mut bound_ws, "regenerate").await;
    assert_eq!(
        regenerated["data"]["ai_response"]["content"],
        "third answer"
    );
    user_ws.collect_broadcast().await;
    let path = app.messages(&token, &conversation).await;
    assert_eq!(texts(&path), ["hello", "third answer"]);
    assert_eq!(path[1]["sibling_ids"].as_array().unwrap().len(), 3);
    assert_eq!(path[1]["sibling_index"], 2);

    // Edit on both endpoints.
    app.llm().script(Behaviour::reply("edited answer"));
    bound_ws
        .send(json!({"type": "edit_message",
            "data": {"message_id": hello, "content": "hello, edited"}}))
        .await;
    let edited = answer_of(&mut bound_ws, "edit_message").await;
    assert_eq!(edited["success"], true, "{edited}");
    assert_eq!(edited["data"]["user_message"]["content"], "hello, edited");
    user_ws.collect_broadcast().await;
    app.llm().script(Behaviour::reply("edited twice"));
    user_ws
        .send(
            json!({"type": "edit_message", "data": {"conversation_id": conversation,
            "message_id": hello, "content": "hello, again"}}),
        )
        .await;
    let edited = answer_of(&mut user_ws, "edit_message").await;
    assert_eq!(edited["data"]["ai_response"]["content"], "edited twice");
    bound_ws.collect_broadcast().await;
    assert_eq!(last_prompt(&app), prompt(&[("user", "hello, again")]));
    assert_eq!(
        path_texts(&app, &token, &conversation).await,
        ["hello, again", "edited twice"]
    );

    // A switch over REST reaches both connections.
    let switched = switch_to(&app, &token, &conversation, &hello).await;
    for ws in [&mut user_ws, &mut bound_ws] {
        let changed = frame_of(ws, "branch_changed").await;
        assert_eq!(changed["data"]["conversation_id"], conversation.as_str());
        assert_eq!(
            changed["data"]["current_message_id"],
            switched["current_message_id"]
        );
    }
    assert_eq!(
        path_texts(&app, &token, &conversation).await,
        ["hello", "third answer"]
    );

    // Deleting a root with the active leaf below it: the newest message left is the leaf,
    // and both connections are told.
    app.delete(&format!("{}/{hello}", messages_path(&conversation)), &token)
        .await
        .assert_status(204);
    for ws in [&mut user_ws, &mut bound_ws] {
        let changed = frame_of(ws, "branch_changed").await;
        assert!(
            changed["data"]["current_message_id"].is_string(),
            "{changed}"
        );
    }
    assert_eq!(
        path_texts(&app, &token, &conversation).await,
        ["hello, again", "edited twice"]
    );
    assert_eq!(tree(&app, &token, &conversation).await.len(), 4);
}

async fn bad_input_is_refused_and_nothing_is_stored(app: TestApp) {
    let token = app.token("bix", USER);
    let (conversation, first, _) = two_exchanges(&app, &token).await;
    let (q1, a1) = (id(&first["user_message"]), id(&first["ai_response"]));
    let stored = tree(&app, &token, &conversation).await.len();
    let asked = app.llm().request_count();

    // A user message named for regenerate, a reply named for edit: 422 naming the field.
    let refused = app.post(&regenerate_path(&conversation, &q1), &token).await;
    refused.assert_status(422);
    assert!(
        refused.detail().contains("message_id"),
        "{}",
        refused.detail()
    );
    let refused = app
        .post_json(
            &edit_path(&conversation, &a1),
            &token,
            &json!({"content": "x"}),
        )
        .await;
    refused.assert_status(422);
    assert!(
        refused.detail().contains("message_id"),
        "{}",
        refused.detail()
    );
    // Empty or blank content, wrong types, malformed JSON, oversize.
    for body in [
        json!({"content": ""}),
        json!({"content": "  "}),
        json!({"content": 5}),
        json!({}),
    ] {
        let refused = app
            .post_json(&edit_path(&conversation, &q1), &token, &body)
            .await;
        refused.assert_status(422);
        assert!(
            refused.detail().contains("content"),
            "{body}: {}",
            refused.detail()
        );
    }
    let malformed = app
        .request(reqwest::Method::POST, &edit_path(&conversation, &q1))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"content\": ");
    assert!(matches!(
        app.send(malformed).await.status.as_u16(),
        400 | 422
    ));
    let huge = "x".repeat(app.state.settings.limits.max_message_chars + 1);
    app.post_json(
        &edit_path(&conversation, &q1),
        &token,
        &json!({"content": huge}),
    )
    .await
    .assert_status(422);
    // Unknown or malformed message IDs, and a message of another conversation: 404.
    let other = app.new_conversation(&token).await;
    let elsewhere = id(&app.say(&token, &other, "assistant", "elsewhere").await);
    let unknown = app.state.ids.message.encode(999_999);
    for message in [unknown.as_str(), "nope", elsewhere.as_str()] {
        app.post(&regenerate_path(&conversation, message), &token)
            .await
            .assert_status(404);
        app.post_json(
            &edit_path(&conversation, message),
            &token,
            &json!({"content": "x"}),
        )
        .await
        .assert_status(404);
        app.put_json(
            &branch_path(&conversation),
            &token,
            &json!({"message_id": message}),
        )
        .await
        .assert_status(404);
        app.delete(
            &format!("{}/{message}", messages_path(&conversation)),
            &token,
        )
        .await
        .assert_status(404);
    }
    app.put_json(
        &branch_path(&conversation),
        &token,
        &json!({"message_id": 5}),
    )
    .await
    .assert_status(422);
    app.put_json(&branch_path(&conversation), &token, &json!({}))
        .await
        .assert_status(422);
    // A conversation with no reply has nothing to regenerate.
    let mut ws = app.connect(&format!("/ws/chat/bix?token={token}")).await;
    ws.send(
        json!({"type": "regenerate", "data": {"conversation_id": other,
        "message_id": "nope"}}),
    )
    .await;
    let failure = ws.next().await;
    assert_eq!(failure["type"], "regenerate");
    assert_eq!(failure["success"], false);
    assert_eq!(failure["error"], "Message not found");
    ws.send(
        json!({"type": "edit_message", "data": {"conversation_id": conversation,
        "message_id": a1, "content": "x"}}),
    )
    .await;
    let failure = ws.next().await;
    assert_eq!(failure["type"], "edit_message");
    assert!(
        failure["error"].as_str().unwrap().contains("message_id"),
        "{failure}"
    );
    ws.send(
        json!({"type": "edit_message", "data": {"conversation_id": conversation,
        "message_id": q1}}),
    )
    .await;
    assert_eq!(ws.next().await["error"], "Missing field: content");
    ws.send(
        json!({"type": "edit_message", "data": {"conversation_id": conversation,
        "message_id": q1, "content": ""}}),
    )
    .await;
    assert!(ws.next().await["error"]
        .as_str()
        .unwrap()
        .contains("content"));
    let empty = app.new_conversation(&token).await;
    ws.send(json!({"type": "regenerate", "data": {"conversation_id": empty}}))
        .await;
    assert_eq!(ws.next().await["error"], "Message not found");

    // An ended conversation takes no regenerate or edit.
    let end = format!("/api/v1/users/me/conversations/{conversation}/end");
    app.post(&end, &token).await.assert_status(200);
    app.post(&regenerate_path(&conversation, &a1), &token)
        .await
        .assert_status(409);
    app.post_json(
        &edit_path(&conversation, &q1),
        &token,
        &json!({"content": "x"}),
    )
    .await
    .assert_status(409);
    ws.send(json!({"type": "regenerate", "data": {"conversation_id": conversation}}))
        .await;
    let failure = ws.next().await;
    assert_eq!(failure["success"], false);
    assert!(
        failure["error"].as_str().unwrap().contains("ended"),
        "{failure}"
    );

    assert_eq!(tree(&app, &token, &conversation).await.len(), stored);
    assert_eq!(
        app.llm().request_count(),
        asked,
        "no LLM call for bad input"
    );
}

async fn others_message_ids_are_refused_everywhere(app: TestApp) {
    let owner = app.token("own", USER);
    let (conversation, first, _) = two_exchanges(&app, &owner).await;
    let (q1, a1) = (id(&first["user_message"]), id(&first["ai_response"]));
    let stranger = app.token("eve", USER);
    let theirs = app.new_conversation(&stranger).await;
    let manager = app.token("max", MANAGER);
    let before = tree(&app, &owner, &conversation).await.len();
    for token in [&stranger, &manager] {
        app.post(&regenerate_path(&conversation, &a1), token)
            .await
            .assert_status(404);
        app.post_json(
            &edit_path(&conversation, &q1),
            token,
            &json!({"content": "x"}),
        )
        .await
        .assert_status(404);
        app.put_json(
            &branch_path(&conversation),
            token,
            &json!({"message_id": q1}),
        )
        .await
        .assert_status(404);
        app.delete(&format!("{}/{q1}", messages_path(&conversation)), token)
            .await
            .assert_status(404);
    }
    // The owner's message IDs in the stranger's own conversation are not found either.
    app.post(&regenerate_path(&theirs, &a1), &stranger)
        .await
        .assert_status(404);
    app.put_json(&branch_path(&theirs), &stranger, &json!({"message_id": q1}))
        .await
        .assert_status(404);
    app.delete(&format!("{}/{q1}", messages_path(&theirs)), &stranger)
        .await
        .assert_status(404);
    let mut ws = app.connect(&format!("/ws/chat/eve?token={stranger}")).await;
    for frame in [
        json!({"type": "regenerate", "data": {"conversation_id": conversation, "message_id": a1}}),
        json!({"type": "edit_message", "data": {"conversation_id": conversation,
            "message_id": q1, "content": "x"}}),
        json!({"type": "regenerate", "data": {"conversation_id": theirs, "message_id": a1}}),
    ] {
        ws.send(frame).await;
        let failure = ws.next().await;
        assert_eq!(failure["success"], false, "{failure}");
        assert!(
            failure["error"].as_str().unwrap().contains("not found"),
            "{failure}"
        );
    }
    // Managers read, the tree too; strangers do not.
    assert_eq!(tree(&app, &manager, &conversation).await.len(), before);
    let path = format!("{}?view=tree", messages_path(&conversation));
    app.get(&path, &stranger).await.assert_status(404);
    assert_eq!(tree(&app, &owner, &conversation).await.len(), before);
}

/// Regenerates the newest reply slowly over a WebSocket of `user`'s, and returns the
/// connection once the first chunk is in.
async fn slow_regenerate(app: &TestApp, user: &str, token: &str, conversation: &str) -> WsClient {
    let (_, slow) = slow_reply(500, Duration::from_millis(20));
    app.llm().script(slow);
    let mut ws = app.connect(&format!("/ws/chat/{user}?token={token}")).await;
    ws.send(json!({"type": "regenerate", "data": {"conversation_id": conversation}}))
        .await;
    assert_eq!(ws.next_after_start().await["type"], "ai_response_chunk");
    ws
}

async fn regenerate_and_send_at_once_one_wins(app: TestApp) {
    let token = app.token("duo", USER);
    let (conversation, _, second) = two_exchanges(&app, &token).await;
    let a2 = id(&second["ai_response"]);
    let mut ws = slow_regenerate(&app, "duo", &token, &conversation).await;
    // While the regenerated reply runs, a send and another regenerate are refused.
    app.chat(&token, &conversation, "meanwhile")
        .await
        .assert_status(409);
    app.post(&regenerate_path(&conversation, &a2), &token)
        .await
        .assert_status(409);
    ws.send(json!({"type": "stop_generation", "data": {"conversation_id": conversation}}))
        .await;
    let stopped = frame_of(&mut ws, "regenerate").await;
    assert_eq!(stopped["data"]["ai_response"]["stopped"], true, "{stopped}");

    // And the other way round: a reply being sent refuses a regenerate.
    let (_, slow) = slow_reply(200, Duration::from_millis(20));
    app.llm().script(slow);
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "long one"}}))
        .await;
    assert_eq!(ws.next_after_start().await["type"], "ai_response_chunk");
    app.post(&regenerate_path(&conversation, &a2), &token)
        .await
        .assert_status(409);
    app.post(
        &format!("/api/v1/conversations/{conversation}/stop"),
        &token,
    )
    .await
    .assert_status(200);
    frame_of(&mut ws, "send_message").await;
    // The stopped regenerated reply is kept, and the next message followed it.
    let path = path_texts(&app, &token, &conversation).await;
    assert_eq!(path.len(), 7, "{path:?}");
    assert_eq!(path[..4], ["Be brief.", "q1", "a1", "q2"]);
    assert_eq!(path[5], "long one");
}

async fn deleting_a_branch_stops_the_reply_generated_under_it(app: TestApp) {
    let token = app.token("del", USER);
    let (conversation, _, second) = two_exchanges(&app, &token).await;
    let q2 = id(&second["user_message"]);
    let mut ws = slow_regenerate(&app, "del", &token, &conversation).await;
    app.delete(&format!("{}/{q2}", messages_path(&conversation)), &token)
        .await
        .assert_status(204);
    // The reply ends, the active leaf moves, and nothing of the branch is left.
    let mut moved = false;
    let end = loop {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("ai_response_chunk") => {}
            Some("branch_changed") => moved = true,
            _ => break frame,
        }
    };
    assert_eq!(end["type"], "regenerate", "{end}");
    assert!(moved || frame_of(&mut ws, "branch_changed").await["data"].is_object());
    eventually("the reply's claim is freed", PATIENCE, || async {
        app.chat(&token, &conversation, "after").await.status == 200
    })
    .await;
    assert_eq!(
        texts(&tree(&app, &token, &conversation).await),
        ["Be brief.", "q1", "a1", "after", "Hello from the fake LLM"]
    );
}

async fn concurrent_stored_messages_form_one_chain(app: TestApp) {
    let token = app.token("lin", USER);
    let conversation = app.new_conversation(&token).await;
    // Linear clients store messages without naming a parent: each follows the active leaf,
    // even when they arrive at once.
    let texts: Vec<String> = (0..16).map(|n| format!("m{n}")).collect();
    let stored = futures::future::join_all(
        texts
            .iter()
            .map(|text| app.say(&token, &conversation, "user", text)),
    )
    .await;
    let path = app.messages(&token, &conversation).await;
    assert_eq!(path.len(), stored.len());
    assert_eq!(path[0]["parent_id"], Value::Null);
    for pair in path.windows(2) {
        assert_eq!(pair[1]["parent_id"], pair[0]["id"], "{pair:?}");
    }
}

/// Applies the migrations before the tree to a database, stores a linear conversation the
/// way the service did then, and starts the service on it.
async fn migrated_app(database: TestDatabase, sqlite: bool) -> TestApp {
    let folder = tempfile::tempdir().unwrap();
    let dialect = if sqlite { "sqlite" } else { "postgres" };
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0005" {
            std::fs::copy(&path, folder.path().join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(folder.path()).await.unwrap();
    let rows = [
        "INSERT INTO users (id, username, created_at, updated_at) VALUES (1, 'old', 1, 1)",
        "INSERT INTO conversations (id, user_id, title, created_at, updated_at) \
         VALUES (1, 1, 'before trees', 1, 1), (2, 1, 'empty', 1, 1)",
        "INSERT INTO messages (id, conversation_id, role, content, timestamp, updated_at) \
         VALUES (1, 1, 'user', 'q1', 1, 1), (2, 1, 'assistant', 'a1', 2, 2), \
         (3, 1, 'user', 'q2', 3, 3), (4, 1, 'assistant', 'a2', 4, 4)",
    ];
    if sqlite {
        use sqlx::Connection;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(database.url().trim_start_matches("sqlite://"))
            .create_if_missing(true);
        let mut connection = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        migrator.run(&mut connection).await.unwrap();
        for row in rows {
            sqlx::query(row).execute(&mut connection).await.unwrap();
        }
    } else {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(database.url()).await.unwrap();
        migrator.run(&mut connection).await.unwrap();
        for row in rows {
            sqlx::query(row).execute(&mut connection).await.unwrap();
        }
        // Keys handed out later follow the ones inserted here.
        for table in ["users", "conversations", "messages"] {
            let reset = format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            );
            sqlx::query(&reset).execute(&mut connection).await.unwrap();
        }
    }
    spawn_app_with(TestOptions::new().database(database).fake_llm()).await
}

async fn a_linear_conversation_migrates_to_a_chain(app: TestApp) {
    let token = app.token("old", USER);
    let conversation = app.state.ids.conversation.encode(1);
    let path = app.messages(&token, &conversation).await;
    assert_eq!(texts(&path), ["q1", "a1", "q2", "a2"]);
    assert_eq!(path[0]["parent_id"], Value::Null);
    for pair in path.windows(2) {
        assert_eq!(pair[1]["parent_id"], pair[0]["id"]);
        assert_eq!(pair[1]["sibling_index"], 0);
    }
    let shown = app
        .get(&format!("/api/v1/conversations/{conversation}"), &token)
        .await
        .json();
    assert_eq!(shown["current_message_id"], path[3]["id"]);
    let empty = app.state.ids.conversation.encode(2);
    let shown = app
        .get(&format!("/api/v1/conversations/{empty}"), &token)
        .await
        .json();
    assert_eq!(shown["current_message_id"], Value::Null);
    // A migrated conversation continues and regenerates like a new one.
    app.llm().script(Behaviour::reply("a2, again"));
    let a2 = path[3]["id"].as_str().unwrap();
    app.post(&regenerate_path(&conversation, a2), &token)
        .await
        .assert_status(200);
    assert_eq!(
        last_prompt(&app),
        prompt(&[("user", "q1"), ("assistant", "a1"), ("user", "q2")])
    );
    assert_eq!(
        path_texts(&app, &token, &conversation).await,
        ["q1", "a1", "q2", "a2, again"]
    );
}

#[tokio::test]
async fn a_linear_conversation_migrates_to_a_chain_on_sqlite() {
    let app = migrated_app(TestDatabase::sqlite(), true).await;
    a_linear_conversation_migrates_to_a_chain(app).await;
}

#[tokio::test]
async fn a_linear_conversation_migrates_to_a_chain_on_postgres() {
    if let Some(database) = TestDatabase::postgres().await {
        let app = migrated_app(database, false).await;
        a_linear_conversation_migrates_to_a_chain(app).await;
    }
}

#[tokio::test]
async fn a_regenerated_reply_resumes_on_another_instance() {
    let Some((a, b)) = two_instances_on(&redis_url(), |_| {}).await else {
        return;
    };
    let token = a.token("ria", USER);
    let conversation = a.new_conversation(&token).await;
    a.llm().script(Behaviour::reply("first"));
    a.chat(&token, &conversation, "hi").await.assert_status(200);
    let (text, slow) = slow_reply(30, Duration::from_millis(30));
    a.llm().script(slow);
    let mut on_a = a.connect(&format!("/ws/chat/ria?token={token}")).await;
    on_a.send(json!({"type": "regenerate", "data": {"conversation_id": conversation}}))
        .await;
    assert_eq!(on_a.next_after_start().await["type"], "ai_response_chunk");
    drop(on_a);

    let mut on_b = b.connect(&format!("/ws/chat/ria?token={token}")).await;
    on_b.send(json!({"type": "resume", "data": {"conversation_id": conversation, "after_seq": 1}}))
        .await;
    let answer = answer_of(&mut on_b, "regenerate").await;
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["ai_response"]["content"], text.as_str());
    assert_eq!(
        path_texts(&b, &token, &conversation).await,
        ["hi", text.as_str()]
    );
    assert_eq!(tree(&b, &token, &conversation).await.len(), 3);
}
