//! `/api/v1/admin`: every user's conversations, and deletion by username.

use serde_json::json;

use crate::helpers::{spawn_app, TestResponse, ADMIN, MANAGER, USER};

fn titles(response: &TestResponse) -> Vec<String> {
    response
        .json()
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|c| c["title"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn admin_lists_every_users_conversations() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    let alice = app.token("alice", USER);
    let bob = app.token("bob", USER);
    app.create_conversation(&alice, &json!({ "title": "alice 1" }))
        .await;
    let bobs = app
        .create_conversation(&bob, &json!({ "title": "bob 1" }))
        .await;
    app.create_conversation(&alice, &json!({ "title": "alice 2" }))
        .await;
    let bobs_id = bobs["id"].as_str().unwrap();
    app.say(&bob, bobs_id, "user", "bump").await;

    let all = app.get("/api/v1/admin/conversations", &admin).await;
    all.assert_status(200);
    assert_eq!(titles(&all), ["bob 1", "alice 2", "alice 1"]);
    assert_eq!(all.total(), 3);

    let page = app
        .get("/api/v1/admin/conversations?skip=1&limit=1", &admin)
        .await;
    assert_eq!(titles(&page), ["alice 2"]);
    assert_eq!(page.total(), 3);
    let search = app
        .get("/api/v1/admin/conversations?search=alice", &admin)
        .await;
    assert_eq!(titles(&search), ["alice 2", "alice 1"]);
    app.post(
        &format!("/api/v1/users/me/conversations/{bobs_id}/end"),
        &bob,
    )
    .await
    .assert_status(200);
    let ended = app
        .get("/api/v1/admin/conversations?status=ended", &admin)
        .await;
    assert_eq!(titles(&ended), ["bob 1"]);

    for token in [&alice, &app.token("mia", MANAGER)] {
        let refused = app.get("/api/v1/admin/conversations", token).await;
        refused.assert_status(403);
        assert_eq!(refused.detail(), "Not enough permissions");
    }
}

#[tokio::test]
async fn admin_deletes_any_conversation() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    let alice = app.token("alice", USER);
    let conversation = app.create_conversation(&alice, &json!({})).await;
    let cid = conversation["id"].as_str().unwrap();
    app.say(&alice, cid, "user", "hello").await;

    let deleted = app
        .delete(&format!("/api/v1/admin/conversations/{cid}"), &admin)
        .await
        .assert_status(200)
        .json();
    assert_eq!(
        deleted,
        json!({ "message": "Conversation deleted successfully", "conversation_id": cid })
    );
    assert_eq!(app.count("conversations").await, 0);
    assert_eq!(app.count("messages").await, 0);
    let again = app
        .delete(&format!("/api/v1/admin/conversations/{cid}"), &admin)
        .await;
    again.assert_status(404);
    assert_eq!(again.detail(), "Conversation not found");
}

#[tokio::test]
async fn admin_deletes_a_user_by_username() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    let alice = app.token("alice", USER);
    let id = app.me(&alice).await["id"].as_str().unwrap().to_owned();
    let conversation = app.create_conversation(&alice, &json!({})).await;
    app.say(&alice, conversation["id"].as_str().unwrap(), "user", "hi")
        .await;
    app.create_conversation(&admin, &json!({})).await;

    let deleted = app
        .delete("/api/v1/admin/users/alice", &admin)
        .await
        .assert_status(200)
        .json();
    assert_eq!(
        deleted,
        json!({ "message": "User deleted successfully", "user_id": id })
    );
    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("conversations").await, 1);
    assert_eq!(app.count("messages").await, 0);
    let missing = app.delete("/api/v1/admin/users/alice", &admin).await;
    missing.assert_status(404);
    assert_eq!(missing.detail(), "User not found");
    // The route takes a username, not a public ID.
    app.delete(&format!("/api/v1/admin/users/{id}"), &admin)
        .await
        .assert_status(404);
}
