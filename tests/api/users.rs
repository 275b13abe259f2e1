//! `/api/v1/users`: creation, listing, profiles, changes and deletion.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, time, TestApp, ADMIN, MANAGER, USER};

async fn create_user(app: &TestApp, admin: &str, body: Value) -> Value {
    app.post_json("/api/v1/users", admin, &body)
        .await
        .assert_status(201)
        .json()
}

#[tokio::test]
async fn admin_creates_a_user_with_201() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    let user = create_user(
        &app,
        &admin,
        json!({ "email": "carol@example.com", "username": "carol", "full_name": "Carol C" }),
    )
    .await;
    assert_eq!(user["username"], "carol");
    assert_eq!(user["email"], "carol@example.com");
    assert_eq!(user["full_name"], "Carol C");
    assert_eq!(user["is_active"], true);
    assert_eq!(user["id"].as_str().unwrap().len(), 16);
    assert_eq!(user["created_at"], user["updated_at"]);
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));

    // The created user can then sign in with a token for that username.
    let me = app.me(&app.token("carol", USER)).await;
    assert_eq!(me["id"], user["id"]);
}

#[tokio::test]
async fn duplicate_username_or_email_is_409() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    create_user(
        &app,
        &admin,
        json!({ "email": "c@example.com", "username": "carol" }),
    )
    .await;
    let response = app
        .post_json(
            "/api/v1/users",
            &admin,
            &json!({ "email": "d@example.com", "username": "carol" }),
        )
        .await;
    response.assert_status(409);
    assert_eq!(
        response.detail(),
        "A user with this username already exists"
    );
    let response = app
        .post_json(
            "/api/v1/users",
            &admin,
            &json!({ "email": "C@Example.com", "username": "dave" }),
        )
        .await;
    response.assert_status(409);
    assert_eq!(response.detail(), "A user with this email already exists");
    // root and carol.
    assert_eq!(app.count("users").await, 2);
}

#[tokio::test]
async fn create_validates_username_and_email() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    let long = "u".repeat(101);
    let cases = [
        (
            json!({ "email": "a@example.com", "username": "ab" }),
            "username",
        ),
        (
            json!({ "email": "a@example.com", "username": long }),
            "username",
        ),
        (
            json!({ "email": "a@example.com", "username": " spaced " }),
            "username",
        ),
        (
            json!({ "email": "not-an-email", "username": "carol" }),
            "email",
        ),
        (json!({ "email": "a@b", "username": "carol" }), "email"),
        (json!({ "username": "carol" }), "email"),
        (json!({ "email": "a@example.com" }), "username"),
        (
            json!({ "email": "a@example.com", "username": "carol", "full_name": "f".repeat(256) }),
            "full_name",
        ),
    ];
    for (body, field) in cases {
        let response = app.post_json("/api/v1/users", &admin, &body).await;
        response.assert_status(422);
        assert!(
            response.detail().contains(field),
            "{body}: {}",
            response.detail()
        );
    }
    // Exactly 3 and 100 characters are fine.
    create_user(
        &app,
        &admin,
        json!({ "email": "x@example.com", "username": "abc" }),
    )
    .await;
    let hundred = "u".repeat(100);
    create_user(
        &app,
        &admin,
        json!({ "email": "y@example.com", "username": hundred }),
    )
    .await;
    assert_eq!(app.count("users").await, 3);
}

#[tokio::test]
async fn list_filters_pages_and_counts() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    app.me(&admin).await;
    for (name, full) in [
        ("anna", "Anna Smith"),
        ("bert", "Bert Jones"),
        ("cleo", "Cleo Smith"),
    ] {
        create_user(
            &app,
            &admin,
            json!({ "email": format!("{name}@example.org"), "username": name, "full_name": full }),
        )
        .await;
    }
    app.patch_json("/api/v1/users/bert", &admin, &json!({ "is_active": false }))
        .await
        .assert_status(200);

    let names = |response: &crate::helpers::TestResponse| -> Vec<String> {
        response
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = app.get("/api/v1/users", &admin).await;
    all.assert_status(200);
    assert_eq!(names(&all), ["root", "anna", "bert", "cleo"]);
    assert_eq!(all.total(), 4);

    let page = app.get("/api/v1/users?skip=1&limit=2", &admin).await;
    assert_eq!(names(&page), ["anna", "bert"]);
    assert_eq!(page.total(), 4);

    let past = app.get("/api/v1/users?skip=10", &admin).await;
    assert_eq!(names(&past), Vec::<String>::new());
    assert_eq!(past.total(), 4);

    let smiths = app.get("/api/v1/users?search=smith", &admin).await;
    assert_eq!(names(&smiths), ["anna", "cleo"]);
    assert_eq!(smiths.total(), 2);

    let by_email = app.get("/api/v1/users?search=bert%40example", &admin).await;
    assert_eq!(names(&by_email), ["bert"]);

    let inactive = app.get("/api/v1/users?is_active=false", &admin).await;
    assert_eq!(names(&inactive), ["bert"]);
    assert_eq!(inactive.total(), 1);
    let active = app
        .get("/api/v1/users?is_active=true&search=smith", &admin)
        .await;
    assert_eq!(active.total(), 2);

    // Wildcards in the search are taken literally.
    let percent = app.get("/api/v1/users?search=%25", &admin).await;
    assert_eq!(percent.total(), 0);

    let manager = app.token("mia", MANAGER);
    let seen = app.get("/api/v1/users", &manager).await;
    seen.assert_status(200);
    assert_eq!(seen.total(), 5);
}

#[tokio::test]
async fn a_profile_is_found_by_public_id_me_and_username() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let me = app.me(&alice).await;
    let id = me["id"].as_str().unwrap();
    for path in [
        format!("/api/v1/users/{id}"),
        "/api/v1/users/me".to_owned(),
        "/api/v1/users/alice".to_owned(),
    ] {
        let found = app.get(&path, &alice).await.assert_status(200).json();
        assert_eq!(found, me, "{path}");
    }
    let admin = app.token("root", ADMIN);
    for path in [
        format!("/api/v1/users/{id}"),
        "/api/v1/users/alice".to_owned(),
    ] {
        assert_eq!(app.get(&path, &admin).await.assert_status(200).json(), me);
    }
    let manager = app.token("mia", MANAGER);
    assert_eq!(
        app.get("/api/v1/users/alice", &manager)
            .await
            .assert_status(200)
            .json(),
        me
    );

    // Someone else's profile is refused, whether it exists or not.
    let bob = app.token("bob", USER);
    app.get("/api/v1/users/alice", &bob)
        .await
        .assert_status(403);
    app.get(&format!("/api/v1/users/{id}"), &bob)
        .await
        .assert_status(403);
    app.get("/api/v1/users/nobody", &bob)
        .await
        .assert_status(403);
    let missing = app.get("/api/v1/users/nobody", &admin).await;
    missing.assert_status(404);
    assert_eq!(missing.detail(), "User not found");
}

#[tokio::test]
async fn admin_updates_a_user() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    let before = app
        .me(&app.token_with_email("alice", USER, "alice@example.com"))
        .await;
    let after = app
        .patch_json(
            "/api/v1/users/alice",
            &admin,
            &json!({ "full_name": "Alice A", "email": "a2@example.com" }),
        )
        .await
        .assert_status(200)
        .json();
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["username"], "alice");
    assert_eq!(after["full_name"], "Alice A");
    assert_eq!(after["email"], "a2@example.com");
    assert_eq!(after["created_at"], before["created_at"]);
    assert!(time(&after["updated_at"]) > time(&before["updated_at"]));

    // Renaming keeps the public ID.
    let id = before["id"].as_str().unwrap();
    let renamed = app
        .patch_json(
            &format!("/api/v1/users/{id}"),
            &admin,
            &json!({ "username": "alicia" }),
        )
        .await
        .assert_status(200)
        .json();
    assert_eq!(renamed["username"], "alicia");
    app.get("/api/v1/users/alicia", &admin)
        .await
        .assert_status(200);
    app.get("/api/v1/users/alice", &admin)
        .await
        .assert_status(404);

    // A taken username or email is a conflict and changes nothing.
    app.me(&app.token("bob", USER)).await;
    let snapshot = app.snapshot().await;
    let response = app
        .patch_json(
            "/api/v1/users/bob",
            &admin,
            &json!({ "username": "alicia" }),
        )
        .await;
    response.assert_status(409);
    assert_eq!(
        response.detail(),
        "A user with this username already exists"
    );
    let response = app
        .patch_json(
            "/api/v1/users/bob",
            &admin,
            &json!({ "email": "a2@example.com" }),
        )
        .await;
    response.assert_status(409);
    let response = app
        .patch_json("/api/v1/users/bob", &admin, &json!({ "username": "x" }))
        .await;
    response.assert_status(422);
    assert!(response.detail().contains("username"));
    let response = app
        .patch_json("/api/v1/users/nobody", &admin, &json!({ "full_name": "N" }))
        .await;
    response.assert_status(404);
    assert_eq!(app.snapshot().await, snapshot);
}

#[tokio::test]
async fn deleting_a_user_deletes_their_data() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    let alice = app.token("alice", USER);
    let bob = app.token("bob", USER);
    let id = app.me(&alice).await["id"].as_str().unwrap().to_owned();
    for token in [&alice, &bob] {
        let conversation = app.create_conversation(token, &json!({})).await;
        let cid = conversation["id"].as_str().unwrap();
        app.say(token, cid, "user", "hello").await;
        app.say(token, cid, "assistant", "hi").await;
    }
    assert_eq!(app.count("messages").await, 4);

    let deleted = app
        .delete(&format!("/api/v1/users/{id}"), &admin)
        .await
        .assert_status(200)
        .json();
    assert_eq!(
        deleted,
        json!({ "message": "User deleted successfully", "user_id": id })
    );
    assert_eq!(app.count("conversations").await, 1);
    assert_eq!(app.count("messages").await, 2);
    app.get(&format!("/api/v1/users/{id}"), &admin)
        .await
        .assert_status(404);
    app.delete(&format!("/api/v1/users/{id}"), &admin)
        .await
        .assert_status(404);

    // A later request of the same username provisions a new, empty account.
    let again = app.me(&alice).await;
    assert_ne!(again["id"].as_str().unwrap(), id);
    let list = app.get("/api/v1/users/me/conversations", &alice).await;
    assert_eq!(list.total(), 0);
}
