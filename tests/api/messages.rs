//! `/api/v1/conversations/{conversation_id}/messages`: stored messages.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, time, TestApp, TestResponse, ADMIN, MANAGER, USER};

fn path(conversation_id: &str) -> String {
    format!("/api/v1/conversations/{conversation_id}/messages")
}

fn contents(response: &TestResponse) -> Vec<String> {
    response
        .json()
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

async fn conversation(app: &TestApp, token: &str) -> String {
    app.create_conversation(token, &json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn store_answers_201_with_every_field() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let cid = conversation(&app, &alice).await;
    let message = app
        .add_message(
            &alice,
            &cid,
            &json!({
                "role": "assistant",
                "content": "Hello there",
                "model": "gpt-4o-mini",
                "tokens_used": 42,
                "response_time": 123.5,
                "message_metadata": { "finish_reason": "stop" }
            }),
        )
        .await;
    assert_eq!(message["id"].as_str().unwrap().len(), 10);
    assert_eq!(message["conversation_id"], cid);
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"], "Hello there");
    assert_eq!(message["model"], "gpt-4o-mini");
    assert_eq!(message["tokens_used"], 42);
    assert_eq!(message["response_time"], 123.5);
    assert_eq!(
        message["message_metadata"],
        json!({ "finish_reason": "stop" })
    );
    assert_eq!(message["created_at"], message["timestamp"]);
    assert_eq!(time(&message["updated_at"]), time(&message["timestamp"]));

    let plain = app.say(&alice, &cid, "user", "  spaced  ").await;
    assert_eq!(plain["content"], "  spaced  ");
    for field in ["model", "tokens_used", "response_time", "message_metadata"] {
        assert_eq!(plain[field], Value::Null, "{field}");
    }
    assert_eq!(plain["created_at"], plain["timestamp"]);
    assert!(!plain["updated_at"].is_null());
    assert_eq!(app.count("messages").await, 2);
}

#[tokio::test]
async fn list_is_chronological_with_a_total() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let cid = conversation(&app, &alice).await;
    let other = conversation(&app, &alice).await;
    app.say(&alice, &other, "user", "elsewhere").await;
    for (i, role) in ["system", "user", "assistant", "user", "assistant"]
        .iter()
        .enumerate()
    {
        app.say(&alice, &cid, role, &format!("m{i}")).await;
    }
    let list = app.get(&path(&cid), &alice).await;
    list.assert_status(200);
    assert_eq!(contents(&list), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(list.total(), 5);
    let messages = list.json();
    let times: Vec<_> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["created_at"], m["timestamp"]);
            assert!(!m["updated_at"].is_null());
            time(&m["timestamp"])
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test]
async fn list_filters_by_role_and_pages() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let cid = conversation(&app, &alice).await;
    for (i, role) in ["user", "assistant", "user", "assistant", "user"]
        .iter()
        .enumerate()
    {
        app.say(&alice, &cid, role, &format!("m{i}")).await;
    }
    let users = app.get(&format!("{}?role=user", path(&cid)), &alice).await;
    assert_eq!(contents(&users), ["m0", "m2", "m4"]);
    assert_eq!(users.total(), 3);
    let assistants = app
        .get(&format!("{}?role=assistant&limit=1", path(&cid)), &alice)
        .await;
    assert_eq!(contents(&assistants), ["m1"]);
    assert_eq!(assistants.total(), 2);
    let system = app
        .get(&format!("{}?role=system", path(&cid)), &alice)
        .await;
    assert_eq!(contents(&system), Vec::<String>::new());
    assert_eq!(system.total(), 0);

    let page = app
        .get(&format!("{}?skip=1&limit=2", path(&cid)), &alice)
        .await;
    assert_eq!(contents(&page), ["m1", "m2"]);
    assert_eq!(page.total(), 5);
    let past = app.get(&format!("{}?skip=9", path(&cid)), &alice).await;
    assert_eq!(contents(&past), Vec::<String>::new());
    assert_eq!(past.total(), 5);
    let past_role = app
        .get(&format!("{}?skip=9&role=user", path(&cid)), &alice)
        .await;
    assert_eq!(past_role.total(), 3);
}

#[tokio::test]
async fn an_empty_conversation_lists_nothing() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let cid = conversation(&app, &alice).await;
    let list = app.get(&path(&cid), &alice).await;
    list.assert_status(200);
    assert_eq!(list.json(), json!([]));
    assert_eq!(list.total(), 0);
}

#[tokio::test]
async fn staff_read_and_admins_write_anyones_messages() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let cid = conversation(&app, &alice).await;
    app.say(&alice, &cid, "user", "from alice").await;

    let admin = app.token("root", ADMIN);
    app.say(&admin, &cid, "assistant", "from admin").await;
    let manager = app.token("mia", MANAGER);
    let seen = app.get(&path(&cid), &manager).await;
    assert_eq!(contents(&seen), ["from alice", "from admin"]);

    // What the admin stored is in alice's conversation.
    assert_eq!(
        contents(&app.get(&path(&cid), &alice).await),
        ["from alice", "from admin"]
    );
}
