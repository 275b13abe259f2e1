//! `/api/v1/users/{user_id}/conversations`: every route.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, time, TestApp, TestResponse, ADMIN, USER};

const MINE: &str = "/api/v1/users/me/conversations";

fn ids(response: &TestResponse) -> Vec<String> {
    response
        .json()
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

/// Creates conversations titled as given, oldest first, and returns their IDs.
async fn create_titled(app: &TestApp, token: &str, titles: &[&str]) -> Vec<String> {
    let mut created = Vec::new();
    for title in titles {
        created.push(id(&app
            .create_conversation(token, &json!({ "title": title }))
            .await));
    }
    created
}

#[tokio::test]
async fn create_answers_201_with_defaults() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let me = app.me(&alice).await;
    let created = app.create_conversation(&alice, &json!({})).await;
    assert_eq!(created["id"].as_str().unwrap().len(), 12);
    assert_eq!(created["user_id"], me["id"]);
    assert_eq!(created["title"], "New Conversation");
    assert_eq!(created["status"], "active");
    assert_eq!(created["system_message"], Value::Null);
    assert_eq!(created["model"], Value::Null);
    assert_eq!(created["context_metadata"], Value::Null);
    assert_eq!(created["ended_at"], Value::Null);
    assert_eq!(time(&created["created_at"]), time(&created["updated_at"]));

    let full = app
        .create_conversation(
            &alice,
            &json!({
                "title": "  Trip plans  ",
                "system_message": "You are terse.",
                "model": "gpt-4o-mini",
                "context_metadata": { "topic": "travel", "n": 1 }
            }),
        )
        .await;
    assert_eq!(full["title"], "Trip plans");
    assert_eq!(full["system_message"], "You are terse.");
    assert_eq!(full["model"], "gpt-4o-mini");
    assert_eq!(
        full["context_metadata"],
        json!({ "topic": "travel", "n": 1 })
    );

    // The same through the username and the public ID in the path.
    let me_id = me["id"].as_str().unwrap();
    for owner in ["alice", me_id] {
        let path = format!("/api/v1/users/{owner}/conversations");
        let response = app
            .post_json(&path, &alice, &json!({ "title": owner }))
            .await;
        assert_eq!(response.assert_status(201).json()["user_id"], me["id"]);
    }
    assert_eq!(app.count("conversations").await, 4);
}

#[tokio::test]
async fn create_refuses_a_model_that_is_not_allowed() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let response = app
        .post_json(MINE, &alice, &json!({ "model": "gpt-9" }))
        .await;
    response.assert_status(422);
    assert_eq!(response.detail(), "model: is not one of the allowed models");
    assert_eq!(app.count("conversations").await, 0);
}

#[tokio::test]
async fn list_is_most_recently_active_first() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let c = create_titled(&app, &alice, &["one", "two", "three"]).await;
    let list = app.get(MINE, &alice).await;
    list.assert_status(200);
    assert_eq!(ids(&list), [c[2].as_str(), c[1].as_str(), c[0].as_str()]);
    assert_eq!(list.total(), 3);

    // A new message is activity.
    app.say(&alice, &c[0], "user", "hello").await;
    assert_eq!(
        ids(&app.get(MINE, &alice).await),
        [c[0].as_str(), c[2].as_str(), c[1].as_str()]
    );

    // So is a change.
    app.patch_json(
        &format!("{MINE}/{}", c[1]),
        &alice,
        &json!({ "title": "2" }),
    )
    .await
    .assert_status(200);
    assert_eq!(
        ids(&app.get(MINE, &alice).await),
        [c[1].as_str(), c[0].as_str(), c[2].as_str()]
    );

    // The conversation's updated_at is the message's time.
    let first = app.get(&format!("{MINE}/{}", c[0]), &alice).await.json();
    let messages = app
        .get(&format!("/api/v1/conversations/{}/messages", c[0]), &alice)
        .await
        .json();
    assert_eq!(first["updated_at"], messages[0]["timestamp"]);
}

#[tokio::test]
async fn list_pages_and_filters() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let c = create_titled(
        &app,
        &alice,
        &["Rust tips", "Cooking", "rust and wasm", "50% off", "Taxes"],
    )
    .await;
    // Someone else's conversations never appear.
    create_titled(&app, &app.token("bob", USER), &["Rust for bob"]).await;

    let page = app.get(&format!("{MINE}?skip=1&limit=2"), &alice).await;
    assert_eq!(ids(&page), [c[3].as_str(), c[2].as_str()]);
    assert_eq!(page.total(), 5);
    let past = app.get(&format!("{MINE}?skip=5"), &alice).await;
    assert_eq!(ids(&past), Vec::<String>::new());
    assert_eq!(past.total(), 5);
    let limit = app.get(&format!("{MINE}?limit=1000"), &alice).await;
    assert_eq!(limit.total(), 5);

    let rust = app.get(&format!("{MINE}?search=rust"), &alice).await;
    assert_eq!(ids(&rust), [c[2].as_str(), c[0].as_str()]);
    assert_eq!(rust.total(), 2);
    let percent = app.get(&format!("{MINE}?search=50%25"), &alice).await;
    assert_eq!(ids(&percent), [c[3].as_str()]);
    let underscore = app.get(&format!("{MINE}?search=_"), &alice).await;
    assert_eq!(underscore.total(), 0);

    app.post(&format!("{MINE}/{}/end", c[1]), &alice)
        .await
        .assert_status(200);
    app.patch_json(
        &format!("{MINE}/{}", c[4]),
        &alice,
        &json!({ "status": "archived" }),
    )
    .await
    .assert_status(200);
    let ended = app.get(&format!("{MINE}?status=ended"), &alice).await;
    assert_eq!(ids(&ended), [c[1].as_str()]);
    assert_eq!(ended.total(), 1);
    let archived = app.get(&format!("{MINE}?status=archived"), &alice).await;
    assert_eq!(ids(&archived), [c[4].as_str()]);
    let active = app
        .get(&format!("{MINE}?status=active&search=rust"), &alice)
        .await;
    assert_eq!(active.total(), 2);
}

#[tokio::test]
async fn recent_defaults_to_five_and_caps_at_twenty() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let titles: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
    let titles: Vec<&str> = titles.iter().map(String::as_str).collect();
    let c = create_titled(&app, &alice, &titles).await;
    let recent = app.get(&format!("{MINE}/recent"), &alice).await;
    recent.assert_status(200);
    assert_eq!(
        ids(&recent),
        [
            c[6].as_str(),
            c[5].as_str(),
            c[4].as_str(),
            c[3].as_str(),
            c[2].as_str()
        ]
    );
    let two = app.get(&format!("{MINE}/recent?limit=2"), &alice).await;
    assert_eq!(ids(&two), [c[6].as_str(), c[5].as_str()]);
    app.get(&format!("{MINE}/recent?limit=20"), &alice)
        .await
        .assert_status(200);
    for bad in ["0", "21", "-1", "x"] {
        let response = app.get(&format!("{MINE}/recent?limit={bad}"), &alice).await;
        response.assert_status(422);
        assert!(response.detail().contains("limit"), "{}", response.detail());
    }
}

#[tokio::test]
async fn get_answers_one_conversation() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let created = app
        .create_conversation(&alice, &json!({ "title": "Hello" }))
        .await;
    let path = format!("{MINE}/{}", id(&created));
    assert_eq!(
        app.get(&path, &alice).await.assert_status(200).json(),
        created
    );
    let by_name = format!("/api/v1/users/alice/conversations/{}", id(&created));
    assert_eq!(app.get(&by_name, &alice).await.json(), created);
    let missing = app.get(&format!("{MINE}/zzzzzzzzzzzz"), &alice).await;
    missing.assert_status(404);
    assert_eq!(missing.detail(), "Conversation not found");
}

#[tokio::test]
async fn patch_and_put_change_title_status_and_metadata() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let created = app
        .create_conversation(
            &alice,
            &json!({ "title": "Old", "context_metadata": { "a": 1 } }),
        )
        .await;
    let path = format!("{MINE}/{}", id(&created));

    let patched = app
        .patch_json(&path, &alice, &json!({ "title": "New" }))
        .await
        .assert_status(200)
        .json();
    assert_eq!(patched["title"], "New");
    assert_eq!(patched["context_metadata"], json!({ "a": 1 }));
    assert_eq!(patched["status"], "active");
    assert_eq!(patched["created_at"], created["created_at"]);
    assert!(time(&patched["updated_at"]) > time(&created["updated_at"]));

    let put = app
        .put_json(
            &path,
            &alice,
            &json!({ "context_metadata": { "b": 2 }, "status": "archived" }),
        )
        .await
        .assert_status(200)
        .json();
    assert_eq!(put["title"], "New");
    assert_eq!(put["context_metadata"], json!({ "b": 2 }));
    assert_eq!(put["status"], "archived");
    assert_eq!(put["ended_at"], Value::Null);

    let ended = app
        .patch_json(&path, &alice, &json!({ "status": "ended" }))
        .await
        .json();
    assert_eq!(ended["status"], "ended");
    assert!(!ended["ended_at"].is_null());
    // An empty change keeps everything but the activity time.
    let same = app
        .patch_json(&path, &alice, &json!({}))
        .await
        .assert_status(200)
        .json();
    assert_eq!(same["title"], "New");
    assert_eq!(same["status"], "ended");
    assert_eq!(same["ended_at"], ended["ended_at"]);

    assert_eq!(app.get(&path, &alice).await.json(), same);
}

#[tokio::test]
async fn reconnect_reactivates_and_returns_messages_in_order() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let cid = id(&app
        .create_conversation(&alice, &json!({ "title": "Chat" }))
        .await);
    for (role, content) in [("user", "one"), ("assistant", "two"), ("user", "three")] {
        app.say(&alice, &cid, role, content).await;
    }
    app.post(&format!("{MINE}/{cid}/end"), &alice)
        .await
        .assert_status(200);

    let reconnected = app
        .post(&format!("{MINE}/{cid}/reconnect"), &alice)
        .await
        .assert_status(200)
        .json();
    assert_eq!(reconnected["id"], cid);
    assert_eq!(reconnected["title"], "Chat");
    assert_eq!(reconnected["status"], "active");
    assert_eq!(reconnected["ended_at"], Value::Null);
    let contents: Vec<&str> = reconnected["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["one", "two", "three"]);
    assert_eq!(reconnected["messages"][1]["role"], "assistant");
    assert_eq!(reconnected["messages"][0]["conversation_id"], cid);

    let stored = app.get(&format!("{MINE}/{cid}"), &alice).await.json();
    assert_eq!(stored["status"], "active");

    // An active conversation stays as it is.
    let again = app
        .post(&format!("{MINE}/{cid}/reconnect"), &alice)
        .await
        .json();
    assert_eq!(again["updated_at"], stored["updated_at"]);
    // Archived ones are not reopened.
    app.patch_json(
        &format!("{MINE}/{cid}"),
        &alice,
        &json!({ "status": "archived" }),
    )
    .await
    .assert_status(200);
    let archived = app
        .post(&format!("{MINE}/{cid}/reconnect"), &alice)
        .await
        .json();
    assert_eq!(archived["status"], "archived");
}

#[tokio::test]
async fn validate_describes_the_conversation() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let me = app.me(&alice).await;
    let created = app
        .create_conversation(&alice, &json!({ "title": "Check" }))
        .await;
    let cid = id(&created);
    let body = app
        .get(&format!("{MINE}/{cid}/validate"), &alice)
        .await
        .assert_status(200)
        .json();
    assert_eq!(
        body,
        json!({
            "valid": true,
            "conversation_id": cid,
            "user_id": me["id"],
            "conversation_title": "Check",
            "conversation_status": "active",
            "created_at": created["created_at"],
            "message": "Conversation is valid and active",
        })
    );
    app.post(&format!("{MINE}/{cid}/end"), &alice)
        .await
        .assert_status(200);
    let ended = app
        .get(&format!("{MINE}/{cid}/validate"), &alice)
        .await
        .json();
    assert_eq!(ended["conversation_status"], "ended");
    assert_eq!(ended["valid"], true);
    app.get(&format!("{MINE}/zzzzzzzzzzzz/validate"), &alice)
        .await
        .assert_status(404);
}

#[tokio::test]
async fn end_is_idempotent() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let cid = id(&app.create_conversation(&alice, &json!({})).await);
    let first = app
        .post(&format!("{MINE}/{cid}/end"), &alice)
        .await
        .assert_status(200)
        .json();
    assert_eq!(first["status"], "ended");
    let ended_at = time(&first["ended_at"]);
    assert!(ended_at >= time(&first["created_at"]));
    let second = app
        .post(&format!("{MINE}/{cid}/end"), &alice)
        .await
        .assert_status(200)
        .json();
    assert_eq!(second["status"], "ended");
    assert_eq!(second["ended_at"], first["ended_at"]);
    let stored = app.get(&format!("{MINE}/{cid}"), &alice).await.json();
    assert_eq!(stored["ended_at"], first["ended_at"]);
}

#[tokio::test]
async fn stats_count_roles_tokens_and_response_time() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let cid = id(&app.create_conversation(&alice, &json!({})).await);

    let empty = app
        .get(&format!("{MINE}/{cid}/stats"), &alice)
        .await
        .assert_status(200)
        .json();
    assert_eq!(
        empty,
        json!({
            "conversation_id": cid,
            "total_messages": 0, "user_messages": 0, "assistant_messages": 0,
            "system_messages": 0, "total_tokens": 0, "total_tokens_used": 0,
            "average_response_time": null,
            "first_message_at": null, "last_message_at": null,
        })
    );

    let first = app.say(&alice, &cid, "system", "be brief").await;
    app.say(&alice, &cid, "user", "hi").await;
    let reply =
        json!({ "role": "assistant", "content": "a", "tokens_used": 10, "response_time": 100.0 });
    app.add_message(&alice, &cid, &reply).await;
    app.say(&alice, &cid, "user", "more").await;
    let reply =
        json!({ "role": "assistant", "content": "b", "tokens_used": 5, "response_time": 300.0 });
    let last = app.add_message(&alice, &cid, &reply).await;

    let stats = app.get(&format!("{MINE}/{cid}/stats"), &alice).await.json();
    assert_eq!(stats["conversation_id"], cid);
    assert_eq!(stats["total_messages"], 5);
    assert_eq!(stats["user_messages"], 2);
    assert_eq!(stats["assistant_messages"], 2);
    assert_eq!(stats["system_messages"], 1);
    assert_eq!(stats["total_tokens"], 15);
    assert_eq!(stats["average_response_time"], 200.0);
    assert_eq!(stats["first_message_at"], first["timestamp"]);
    assert_eq!(stats["last_message_at"], last["timestamp"]);
}

#[tokio::test]
async fn export_downloads_json_and_markdown() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let created = app
        .create_conversation(
            &alice,
            &json!({ "title": "Export me", "system_message": "Be kind." }),
        )
        .await;
    let cid = id(&created);
    app.say(&alice, &cid, "user", "Question?").await;
    app.say(&alice, &cid, "assistant", "Answer.").await;

    for path in [
        format!("{MINE}/{cid}/export"),
        format!("{MINE}/{cid}/export?format=json"),
    ] {
        let response = app.get(&path, &alice).await;
        response.assert_status(200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(
            response.header("content-disposition"),
            Some(format!("attachment; filename=\"conversation-{cid}.json\"").as_str())
        );
        let document = response.json();
        assert_eq!(document["id"], cid);
        assert_eq!(document["title"], "Export me");
        assert_eq!(document["system_message"], "Be kind.");
        // The system message is stored as the first message.
        let messages = document["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(messages[0]["content"], "Be kind.");
        assert_eq!(messages[1]["content"], "Question?");
        assert_eq!(messages[2]["role"], "assistant");
    }

    let markdown = app
        .get(&format!("{MINE}/{cid}/export?format=markdown"), &alice)
        .await;
    markdown.assert_status(200);
    assert_eq!(
        markdown.header("content-type"),
        Some("text/markdown; charset=utf-8")
    );
    assert_eq!(
        markdown.header("content-disposition"),
        Some(format!("attachment; filename=\"conversation-{cid}.md\"").as_str())
    );
    let text = &markdown.text;
    assert!(text.starts_with("# Export me\n"), "{text}");
    assert!(text.contains("- Status: active"));
    assert!(text.contains("- System message: Be kind."));
    let question = text.find("## user").unwrap();
    let answer = text.find("## assistant").unwrap();
    assert!(question < answer);
    assert!(text.contains("Question?") && text.contains("Answer."));

    let response = app
        .get(&format!("{MINE}/{cid}/export?format=pdf"), &alice)
        .await;
    response.assert_status(422);
    assert!(
        response.detail().contains("format"),
        "{}",
        response.detail()
    );
}

#[tokio::test]
async fn delete_removes_the_conversation_and_its_messages() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let keep = id(&app.create_conversation(&alice, &json!({})).await);
    let gone = id(&app.create_conversation(&alice, &json!({})).await);
    app.say(&alice, &keep, "user", "stays").await;
    app.say(&alice, &gone, "user", "goes").await;
    app.say(&alice, &gone, "assistant", "goes too").await;

    let deleted = app
        .delete(&format!("{MINE}/{gone}"), &alice)
        .await
        .assert_status(200)
        .json();
    assert_eq!(
        deleted,
        json!({ "message": "Conversation deleted successfully", "conversation_id": gone })
    );
    assert_eq!(app.count("conversations").await, 1);
    assert_eq!(app.count("messages").await, 1);
    app.get(&format!("{MINE}/{gone}"), &alice)
        .await
        .assert_status(404);
    app.get(&format!("/api/v1/conversations/{gone}/messages"), &alice)
        .await
        .assert_status(404);
    app.delete(&format!("{MINE}/{gone}"), &alice)
        .await
        .assert_status(404);
    assert_eq!(ids(&app.get(MINE, &alice).await), [keep.as_str()]);
}

#[tokio::test]
async fn admin_acts_on_a_users_conversations_through_the_path() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let admin = app.token("root", ADMIN);
    app.me(&alice).await;
    let created = app
        .post_json(
            "/api/v1/users/alice/conversations",
            &admin,
            &json!({ "title": "By admin" }),
        )
        .await
        .assert_status(201)
        .json();
    let list = app.get(MINE, &alice).await;
    assert_eq!(ids(&list), [id(&created)]);
    assert_eq!(
        app.get("/api/v1/users/me/conversations", &admin)
            .await
            .total(),
        0
    );
}
