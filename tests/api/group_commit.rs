//! Writes that arrive together and share a transaction: one that fails fails alone, and one
//! whose caller gives up holds up no other. On both backends (PostgreSQL commits each write on
//! its own, and must answer the same).

use std::collections::BTreeSet;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::helpers::db::{MessageRole, NewMessage, Scope};
use crate::helpers::{spawn_app_with, TestApp, TestOptions, ADMIN, PATIENCE, USER};
use crate::test_database::TestDatabase;

/// The usernames of every user, as an admin lists them.
async fn usernames(app: &TestApp, admin: &str) -> BTreeSet<String> {
    let list = app
        .get("/api/v1/users?limit=1000", admin)
        .await
        .assert_status(200)
        .json();
    let list: Vec<Value> = serde_json::from_value(list).expect("a list");
    list.iter()
        .map(|user| user["username"].as_str().expect("a username").to_owned())
        .collect()
}

/// The contents of a conversation's messages.
async fn contents(app: &TestApp, token: &str, conversation: &str) -> BTreeSet<String> {
    app.messages(token, conversation)
        .await
        .iter()
        .map(|message| message["content"].as_str().expect("content").to_owned())
        .collect()
}

/// Sixty writes at once, every third one a user whose username is taken: those answer 409,
/// and every other write commits.
async fn a_failing_write_fails_alone(app: TestApp) {
    let admin = app.token("root", ADMIN);
    let owner = app.token("owner", USER);
    let conversation = app.new_conversation(&owner).await;
    let taken = json!({ "username": "taken", "email": "taken@example.com" });
    app.post_json("/api/v1/users", &admin, &taken)
        .await
        .assert_status(201);

    let writes = (0..60).map(|i| {
        let (app, admin, owner, conversation, taken) =
            (&app, &admin, &owner, &conversation, &taken);
        async move {
            let response = match i % 3 {
                0 => app.post_json("/api/v1/users", admin, taken).await,
                1 => {
                    let user = json!({ "username": format!("user{i}"), "email": format!("user{i}@example.com") });
                    app.post_json("/api/v1/users", admin, &user).await
                }
                _ => {
                    let path = format!("/api/v1/conversations/{conversation}/messages");
                    let message = json!({ "role": "user", "content": format!("message {i}") });
                    app.post_json(&path, owner, &message).await
                }
            };
            (i, response.status)
        }
    });
    for (i, status) in join_all(writes).await {
        let expected = if i % 3 == 0 { 409 } else { 201 };
        assert_eq!(status, expected, "write {i}");
    }

    let users = usernames(&app, &admin).await;
    let messages = contents(&app, &owner, &conversation).await;
    for i in 0..60 {
        match i % 3 {
            0 => {}
            1 => assert!(users.contains(&format!("user{i}")), "user{i} is missing"),
            _ => assert!(
                messages.contains(&format!("message {i}")),
                "message {i} is missing"
            ),
        }
    }
    assert_eq!(messages.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_fails_alone_on_sqlite() {
    a_failing_write_fails_alone(spawn_app_with(TestOptions::new()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_fails_alone_on_postgres() {
    if let Some(database) = TestDatabase::postgres().await {
        let app = spawn_app_with(TestOptions::new().database(database)).await;
        a_failing_write_fails_alone(app).await;
    }
}

/// Writes whose callers give up at any point (waiting for the writer, holding it, waiting
/// for the commit) hold up none of the others, and the store keeps writing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_callers_give_up_hold_up_no_other() {
    let app = spawn_app_with(TestOptions::new()).await;
    let owner = app.token("owner", USER);
    let conversation = app.new_conversation(&owner).await;
    let key = app
        .state
        .ids
        .conversation
        .decode(&conversation)
        .expect("a conversation id");
    let owner_key = app
        .state
        .ids
        .user
        .decode(&app.my_id(&owner).await)
        .expect("a user id");
    let store = app.state.store.clone();
    let write = |content: String| {
        let store = store.clone();
        tokio::spawn(async move {
            let message = NewMessage {
                role: MessageRole::User,
                content,
                model: None,
                tokens_used: None,
                response_time: None,
                message_metadata: None,
            };
            store
                .add_message(Scope::Owner(owner_key), key, &message)
                .await
        })
    };

    for round in 0..5 {
        let tasks: Vec<_> = (0..40)
            .map(|i| write(format!("round {round} message {i}")))
            .collect();
        // Every other caller gives up, each a little later than the one before.
        let mut kept = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            if i % 2 == 0 {
                kept.push((i, task));
            } else {
                tokio::task::yield_now().await;
                task.abort();
            }
        }
        let kept = tokio::time::timeout(
            PATIENCE,
            join_all(
                kept.into_iter()
                    .map(|(i, task)| async move { (i, task.await) }),
            ),
        )
        .await
        .expect("the writes that were not given up are answered");
        // Up to 200 messages by now (a given-up write may still commit): read them all.
        let path = format!("/api/v1/conversations/{conversation}/messages?limit=1000");
        let listed = app.get(&path, &owner).await.assert_status(200).json();
        let stored: BTreeSet<&str> = listed
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|message| message["content"].as_str().expect("content"))
            .collect();
        for (i, outcome) in kept {
            let message = outcome.expect("the task ran").expect("the write succeeds");
            assert!(
                message.is_some(),
                "message {i} of round {round} was not stored"
            );
            assert!(stored.contains(format!("round {round} message {i}").as_str()));
        }
    }
}
