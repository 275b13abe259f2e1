//! Bad input: every refusal is a 4xx with a clear detail, never a 500, and writes nothing.

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    assert_safe_error, spawn_app, spawn_app_with, TestApp, TestOptions, TestResponse, ADMIN, USER,
};

/// alice's token, one conversation of hers with a message, and that message's ID.
struct Fixture {
    admin: String,
    alice: String,
    conversation: String,
    message: String,
    user: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    let admin = app.token("root", ADMIN);
    let alice = app.token("alice", USER);
    app.me(&admin).await;
    let user = app.me(&alice).await["id"].as_str().unwrap().to_owned();
    let conversation = app.create_conversation(&alice, &json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let message = app.say(&alice, &conversation, "user", "hello").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    Fixture {
        admin,
        alice,
        conversation,
        message,
        user,
    }
}

/// Asserts a refusal with this status whose detail mentions `needle`.
#[track_caller]
fn assert_refused(response: &TestResponse, status: u16, needle: &str, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text);
    assert_safe_error(response);
    let detail = response.detail();
    assert!(
        detail.contains(needle),
        "{what}: detail {detail:?} does not name {needle:?}"
    );
}

#[tokio::test]
async fn malformed_json_is_422() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let before = app.snapshot().await;
    let one = format!("/api/v1/users/me/conversations/{}", f.conversation);
    let targets = [
        (Method::POST, "/api/v1/users".to_owned(), &f.admin),
        (Method::PATCH, "/api/v1/users/alice".to_owned(), &f.admin),
        (
            Method::POST,
            "/api/v1/users/me/conversations".to_owned(),
            &f.alice,
        ),
        (Method::PATCH, one.clone(), &f.alice),
        (Method::PUT, one, &f.alice),
        (
            Method::POST,
            format!("/api/v1/conversations/{}/messages", f.conversation),
            &f.alice,
        ),
    ];
    for (method, path, token) in &targets {
        for body in ["{", "{\"title\": }", "not json", "", "{\"a\": 1} trailing"] {
            let request = app
                .request(method.clone(), path)
                .bearer_auth(token)
                .header(CONTENT_TYPE, "application/json")
                .body(body);
            let response = app.send(request).await;
            let what = format!("{method} {path} with {body:?}");
            assert_refused(&response, 422, "Invalid request body", &what);
        }
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn wrong_types_missing_fields_and_bad_values_name_the_field() {
    let app =
        spawn_app_with(TestOptions::new().settings(|s| s.limits.max_message_chars = 50)).await;
    let f = fixture(&app).await;
    let before = app.snapshot().await;
    let conversations = "/api/v1/users/me/conversations".to_owned();
    let one = format!("{conversations}/{}", f.conversation);
    let messages = format!("/api/v1/conversations/{}/messages", f.conversation);
    let users = "/api/v1/users".to_owned();
    let alice = "/api/v1/users/alice".to_owned();
    let cases: Vec<(Method, &String, &String, Value, &str)> = vec![
        (
            Method::POST,
            &conversations,
            &f.alice,
            json!({ "title": 5 }),
            "title",
        ),
        (
            Method::POST,
            &conversations,
            &f.alice,
            json!({ "title": "" }),
            "title",
        ),
        (
            Method::POST,
            &conversations,
            &f.alice,
            json!({ "title": "   " }),
            "title",
        ),
        (
            Method::POST,
            &conversations,
            &f.alice,
            json!({ "title": "t".repeat(256) }),
            "title",
        ),
        (
            Method::POST,
            &conversations,
            &f.alice,
            json!({ "system_message": ["x"] }),
            "system_message",
        ),
        (
            Method::POST,
            &conversations,
            &f.alice,
            json!({ "system_message": "s".repeat(8001) }),
            "system_message",
        ),
        (
            Method::POST,
            &conversations,
            &f.alice,
            json!({ "model": 4 }),
            "model",
        ),
        (
            Method::POST,
            &conversations,
            &f.alice,
            json!({ "context_metadata": "x" }),
            "context_metadata",
        ),
        (
            Method::POST,
            &conversations,
            &f.alice,
            json!({ "context_metadata": [1] }),
            "context_metadata",
        ),
        (
            Method::POST,
            &conversations,
            &f.alice,
            json!([]),
            "Invalid request body",
        ),
        (
            Method::PATCH,
            &one,
            &f.alice,
            json!({ "status": "deleted" }),
            "status",
        ),
        (
            Method::PATCH,
            &one,
            &f.alice,
            json!({ "status": 1 }),
            "status",
        ),
        (
            Method::PATCH,
            &one,
            &f.alice,
            json!({ "title": "" }),
            "title",
        ),
        (
            Method::PUT,
            &one,
            &f.alice,
            json!({ "title": "t".repeat(256) }),
            "title",
        ),
        (
            Method::PUT,
            &one,
            &f.alice,
            json!({ "context_metadata": 3 }),
            "context_metadata",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "content": "hi" }),
            "role",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user" }),
            "content",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "robot", "content": "hi" }),
            "role",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user", "content": 7 }),
            "content",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user", "content": "" }),
            "content",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user", "content": " \n " }),
            "content",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user", "content": "c".repeat(51) }),
            "content",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user", "content": "x", "tokens_used": -1 }),
            "tokens_used",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user", "content": "x", "tokens_used": "ten" }),
            "tokens_used",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user", "content": "x", "tokens_used": 1.5 }),
            "tokens_used",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user", "content": "x", "response_time": -0.5 }),
            "response_time",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user", "content": "x", "model": "m".repeat(101) }),
            "model",
        ),
        (
            Method::POST,
            &messages,
            &f.alice,
            json!({ "role": "user", "content": "x", "message_metadata": "meta" }),
            "message_metadata",
        ),
        (
            Method::POST,
            &users,
            &f.admin,
            json!({ "username": "carol" }),
            "email",
        ),
        (
            Method::POST,
            &users,
            &f.admin,
            json!({ "email": 5, "username": "carol" }),
            "email",
        ),
        (
            Method::PATCH,
            &alice,
            &f.admin,
            json!({ "is_active": "yes" }),
            "is_active",
        ),
        (
            Method::PATCH,
            &alice,
            &f.admin,
            json!({ "email": "nope" }),
            "email",
        ),
        (
            Method::PATCH,
            &alice,
            &f.admin,
            json!({ "username": "a" }),
            "username",
        ),
        (
            Method::PATCH,
            &alice,
            &f.admin,
            json!({ "full_name": "f".repeat(256) }),
            "full_name",
        ),
    ];
    for (method, path, token, body, field) in cases {
        let response = app
            .call(method.clone(), path, Some(token), Some(&body))
            .await;
        let what = format!("{method} {path} with {body}");
        assert_refused(&response, 422, field, &what);
    }
    assert_eq!(app.snapshot().await, before);
    // The limit itself is fine.
    app.say(&f.alice, &f.conversation, "user", &"c".repeat(50))
        .await;
}

#[tokio::test]
async fn out_of_range_paging_is_422_naming_the_parameter() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let lists = [
        ("/api/v1/users".to_owned(), &f.admin),
        ("/api/v1/users/me/conversations".to_owned(), &f.alice),
        ("/api/v1/admin/conversations".to_owned(), &f.admin),
        (
            format!("/api/v1/conversations/{}/messages", f.conversation),
            &f.alice,
        ),
    ];
    let cases = [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("skip=-1", "skip"),
        ("skip=abc", "skip"),
        ("skip=99999999999999999999", "skip"),
    ];
    for (path, token) in &lists {
        for (query, field) in cases {
            let response = app.get(&format!("{path}?{query}"), token).await;
            assert_refused(&response, 422, field, &format!("{path}?{query}"));
        }
        for query in ["limit=1", "limit=1000", "skip=0", "skip=5000"] {
            app.get(&format!("{path}?{query}"), token)
                .await
                .assert_status(200);
        }
    }
    let filters = [
        ("/api/v1/users?is_active=maybe", &f.admin, "is_active"),
        (
            "/api/v1/users/me/conversations?status=deleted",
            &f.alice,
            "status",
        ),
        (
            "/api/v1/admin/conversations?status=gone",
            &f.admin,
            "status",
        ),
    ];
    for (path, token, field) in filters {
        assert_refused(&app.get(path, token).await, 422, field, path);
    }
    let path = format!(
        "/api/v1/conversations/{}/messages?role=robot",
        f.conversation
    );
    assert_refused(&app.get(&path, &f.alice).await, 422, "role", &path);
}

#[tokio::test]
async fn unknown_malformed_and_wrong_kind_ids_are_404() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let before = app.snapshot().await;
    let long = "a".repeat(5000);
    let bad_ids = [
        "zzzzzzzzzzzz",
        "abc",
        "0",
        "-1",
        "9223372036854775807",
        "!!!!!!!!!!!!",
        "%C3%A9t%C3%A9",
        "%20",
        long.as_str(),
        f.message.as_str(),
        f.user.as_str(),
    ];
    let routes = [
        (Method::GET, "/api/v1/users/me/conversations/{id}"),
        (Method::PATCH, "/api/v1/users/me/conversations/{id}"),
        (Method::PUT, "/api/v1/users/me/conversations/{id}"),
        (Method::DELETE, "/api/v1/users/me/conversations/{id}"),
        (
            Method::POST,
            "/api/v1/users/me/conversations/{id}/reconnect",
        ),
        (Method::GET, "/api/v1/users/me/conversations/{id}/validate"),
        (Method::POST, "/api/v1/users/me/conversations/{id}/end"),
        (Method::GET, "/api/v1/users/me/conversations/{id}/stats"),
        (Method::GET, "/api/v1/users/me/conversations/{id}/export"),
        (Method::GET, "/api/v1/conversations/{id}/messages"),
        (Method::POST, "/api/v1/conversations/{id}/messages"),
        (Method::DELETE, "/api/v1/admin/conversations/{id}"),
    ];
    let body = json!({ "role": "user", "content": "x", "title": "x" });
    for token in [&f.alice, &f.admin] {
        for (method, template) in &routes {
            for id in bad_ids {
                let path = template.replace("{id}", id);
                let response = app
                    .call(method.clone(), &path, Some(token), Some(&body))
                    .await;
                let what = format!("{method} {}", &path[..path.len().min(90)]);
                if template.contains("/admin/") && token == &f.alice {
                    assert_refused(&response, 403, "permissions", &what);
                } else {
                    assert_refused(&response, 404, "not found", &what);
                }
            }
        }
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn unknown_users_are_404_for_admins_and_403_for_others() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let before = app.snapshot().await;
    let long = "u".repeat(5000);
    let conversation_as_user = f.conversation.clone();
    for id in [
        "nobody",
        "zzzzzzzzzzzzzzzz",
        conversation_as_user.as_str(),
        long.as_str(),
        "%20",
    ] {
        for path in [
            format!("/api/v1/users/{id}"),
            format!("/api/v1/users/{id}/conversations"),
            format!("/api/v1/users/{id}/conversations/recent"),
            format!("/api/v1/users/{id}/conversations/{}", f.conversation),
        ] {
            let what = &path[..path.len().min(90)];
            assert_refused(&app.get(&path, &f.admin).await, 404, "User not found", what);
            assert_refused(&app.get(&path, &f.alice).await, 403, "permissions", what);
        }
        let path = format!("/api/v1/admin/users/{id}");
        assert_refused(
            &app.delete(&path, &f.admin).await,
            404,
            "User not found",
            &path,
        );
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = spawn_app_with(TestOptions::new().settings(|s| s.limits.max_body_bytes = 4096)).await;
    let f = fixture(&app).await;
    let before = app.snapshot().await;
    let big = "x".repeat(5000);
    let targets = [
        (
            format!("/api/v1/conversations/{}/messages", f.conversation),
            json!({ "role": "user", "content": big }),
        ),
        (
            "/api/v1/users/me/conversations".to_owned(),
            json!({ "title": big }),
        ),
        (
            format!("/api/v1/users/me/conversations/{}", f.conversation),
            json!({ "context_metadata": { "blob": big } }),
        ),
    ];
    for (path, body) in &targets {
        let method = if path.ends_with(&f.conversation) {
            Method::PATCH
        } else {
            Method::POST
        };
        let response = app
            .call(method.clone(), path, Some(&f.alice), Some(body))
            .await;
        assert_refused(&response, 413, "too large", &format!("{method} {path}"));
    }
    assert_eq!(app.snapshot().await, before);
    // Just under the limit is accepted (and then checked as usual).
    let body = json!({ "role": "user", "content": "y".repeat(3000) });
    app.add_message(&f.alice, &f.conversation, &body).await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let before = app.snapshot().await;
    let targets = [
        (Method::POST, "/api/v1/users".to_owned(), &f.admin),
        (Method::PATCH, "/api/v1/users/alice".to_owned(), &f.admin),
        (
            Method::POST,
            "/api/v1/users/me/conversations".to_owned(),
            &f.alice,
        ),
        (
            Method::PATCH,
            format!("/api/v1/users/me/conversations/{}", f.conversation),
            &f.alice,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{}/messages", f.conversation),
            &f.alice,
        ),
    ];
    let body =
        r#"{"role": "user", "content": "x", "title": "x", "email": "a@b.co", "username": "abc"}"#;
    for (method, path, token) in &targets {
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let mut request = app
                .request(method.clone(), path)
                .bearer_auth(token)
                .body(body);
            if let Some(content_type) = content_type {
                request = request.header(CONTENT_TYPE, content_type);
            }
            let response = app.send(request).await;
            let what = format!("{method} {path} as {content_type:?}");
            assert_refused(&response, 415, "application/json", &what);
        }
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn trailing_slashes_are_optional_on_every_route() {
    let app = spawn_app().await;
    let f = fixture(&app).await;
    let c = &f.conversation;
    let one = format!("/api/v1/users/me/conversations/{c}");
    let routes: Vec<(Method, String, &String, Option<Value>, u16)> = vec![
        (Method::GET, "/health".into(), &f.alice, None, 200),
        (
            Method::GET,
            "/api/v1/chat/health".into(),
            &f.alice,
            None,
            200,
        ),
        (Method::GET, "/openapi.json".into(), &f.alice, None, 200),
        (Method::GET, "/redoc".into(), &f.alice, None, 200),
        (Method::GET, "/api/v1/users".into(), &f.admin, None, 200),
        (Method::GET, "/api/v1/users/me".into(), &f.alice, None, 200),
        (
            Method::GET,
            format!("/api/v1/users/{}", f.user),
            &f.alice,
            None,
            200,
        ),
        (
            Method::GET,
            "/api/v1/users/me/conversations".into(),
            &f.alice,
            None,
            200,
        ),
        (
            Method::GET,
            "/api/v1/users/me/conversations/recent".into(),
            &f.alice,
            None,
            200,
        ),
        (Method::GET, one.clone(), &f.alice, None, 200),
        (
            Method::PATCH,
            one.clone(),
            &f.alice,
            Some(json!({ "title": "t" })),
            200,
        ),
        (
            Method::PUT,
            one.clone(),
            &f.alice,
            Some(json!({ "title": "u" })),
            200,
        ),
        (Method::GET, format!("{one}/validate"), &f.alice, None, 200),
        (Method::GET, format!("{one}/stats"), &f.alice, None, 200),
        (Method::GET, format!("{one}/export"), &f.alice, None, 200),
        (Method::POST, format!("{one}/end"), &f.alice, None, 200),
        (
            Method::POST,
            format!("{one}/reconnect"),
            &f.alice,
            None,
            200,
        ),
        (
            Method::GET,
            format!("/api/v1/conversations/{c}/messages"),
            &f.alice,
            None,
            200,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{c}/messages"),
            &f.alice,
            Some(json!({ "role": "user", "content": "x" })),
            201,
        ),
        (
            Method::GET,
            "/api/v1/admin/conversations".into(),
            &f.admin,
            None,
            200,
        ),
        (
            Method::POST,
            "/api/v1/users/me/conversations".into(),
            &f.alice,
            Some(json!({})),
            201,
        ),
    ];
    for (method, path, token, body, status) in routes {
        for path in [path.clone(), format!("{path}/")] {
            let response = app
                .call(method.clone(), &path, Some(token), body.as_ref())
                .await;
            assert_eq!(
                response.status, status,
                "{method} {path}: {}",
                response.text
            );
        }
    }
    let response = app.get_public("/").await;
    response.assert_status(200);

    // Deletions, each once with the slash.
    let admin = &f.admin;
    let spare = app.create_conversation(&f.alice, &json!({})).await;
    let spare = spare["id"].as_str().unwrap();
    app.delete(
        &format!("/api/v1/users/me/conversations/{spare}/"),
        &f.alice,
    )
    .await
    .assert_status(200);
    app.delete(&format!("/api/v1/admin/conversations/{c}/"), admin)
        .await
        .assert_status(200);
    app.post_json(
        "/api/v1/users/",
        admin,
        &json!({ "email": "b@example.com", "username": "bob" }),
    )
    .await
    .assert_status(201);
    app.patch_json("/api/v1/users/bob/", admin, &json!({ "full_name": "B" }))
        .await
        .assert_status(200);
    app.delete("/api/v1/users/bob/", admin)
        .await
        .assert_status(200);
    app.delete("/api/v1/admin/users/alice/", admin)
        .await
        .assert_status(200);
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let token = app.token("alice", USER);
    let missing = app.get("/api/v1/nothing-here", &token).await;
    assert_refused(&missing, 404, "Not Found", "unknown route");
    let method = app
        .call(Method::DELETE, "/health", Some(&token), None)
        .await;
    assert_refused(&method, 405, "Method Not Allowed", "wrong method");
}

#[tokio::test]
async fn an_undecodable_path_segment_answers_json() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    for path in [
        "/api/v1/users/%FF",
        "/api/v1/users/me/conversations/%FF%FE",
        "/api/v1/conversations/%C3%28/messages",
    ] {
        assert_refused(&app.get(path, &admin).await, 404, "Not Found", path);
    }
    let path = "/api/v1/admin/users/%FF";
    assert_refused(&app.delete(path, &admin).await, 404, "Not Found", path);
}

#[tokio::test]
async fn huge_token_counts_do_not_break_the_stats() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let conversation = app.create_conversation(&alice, &json!({})).await;
    let cid = conversation["id"].as_str().unwrap();
    let body = json!({ "role": "assistant", "content": "x", "tokens_used": i64::MAX });
    app.add_message(&alice, cid, &body).await;
    app.add_message(&alice, cid, &body).await;
    let stats = app
        .get(
            &format!("/api/v1/users/me/conversations/{cid}/stats"),
            &alice,
        )
        .await;
    stats.assert_status(200);
    assert_eq!(stats.json()["total_messages"], 2);
    assert_eq!(stats.json()["total_tokens"], i64::MAX);
}

/// Posts `body` as it is, JSON text of the test's own, with `token`.
async fn post_raw(app: &TestApp, token: &str, path: &str, body: &str) -> TestResponse {
    app.send(
        app.request(reqwest::Method::POST, path)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned()),
    )
    .await
}

#[tokio::test]
async fn nul_characters_where_nothing_is_stored_are_accepted() {
    // On PostgreSQL when it is there: it is the store that cannot keep a NUL.
    let app = match crate::test_database::TestDatabase::postgres().await {
        Some(database) => spawn_app_with(TestOptions::new().database(database)).await,
        None => spawn_app().await,
    };
    let token = app.token("nul-keys", USER);
    let conversation = app.new_conversation(&token).await;
    let path = format!("/api/v1/conversations/{conversation}/messages");
    // Unknown keys are allowed by the schema and ignored, whatever they hold.
    for body in [
        r#"{"role":"user","content":"ok","unknown\u0000":1}"#,
        r#"{"role":"user","content":"ok","unknown":"a\u0000b"}"#,
        r#"{"role":"user","content":"ok","\u0000":{"deep\u0000":["\u0000"]}}"#,
    ] {
        let stored = post_raw(&app, &token, &path, body).await;
        assert_eq!(stored.status, 201, "{body}: {}", stored.text);
    }
    let body = r#"{"title":"t","x\u0000y":"\u0000"}"#;
    let created = post_raw(&app, &token, "/api/v1/users/me/conversations", body).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let mut ws = app
        .connect(&format!("/ws/chat/nul-keys?token={token}"))
        .await;
    ws.send_text(&format!(
        r#"{{"type":"send_message","extra\u0000":1,"data":{{"conversation_id":"{conversation}","content":"hi","unknown\u0000":"\u0000"}}}}"#
    ))
    .await;
    let answer = loop {
        let frame = ws.next().await;
        if frame["type"] == "send_message" {
            break frame;
        }
    };
    assert_eq!(answer["success"], true, "{answer}");
}

#[tokio::test]
async fn nul_characters_are_refused_before_any_store_sees_them() {
    let Some(database) = crate::test_database::TestDatabase::postgres().await else {
        return;
    };
    let app = spawn_app_with(TestOptions::new().database(database)).await;
    let token = app.token("nul", USER);
    let conversation = app.new_conversation(&token).await;
    let path = format!("/api/v1/conversations/{conversation}/messages");
    for body in [
        r#"{"role":"user","content":"a\u0000b"}"#,
        r#"{"role":"user","content":"ok","message_metadata":{"k\u0000":1}}"#,
    ] {
        let refused = post_raw(&app, &token, &path, body).await;
        assert_eq!(refused.status, 422, "{}", refused.text);
        assert!(refused.detail().contains("NUL"), "{}", refused.text);
    }
    // An escaped backslash before `u0000` is plain text.
    let stored = post_raw(
        &app,
        &token,
        &path,
        r#"{"role":"user","content":"a\\u0000b"}"#,
    )
    .await;
    assert_eq!(stored.status, 201, "{}", stored.text);
    let mut ws = app.connect(&format!("/ws/chat/nul?token={token}")).await;
    ws.send_text(&format!(
        r#"{{"type":"send_message","data":{{"conversation_id":"{conversation}","content":"x\u0000"}}}}"#
    ))
    .await;
    let answer = ws.next().await;
    assert_eq!(answer["success"], false);
    assert!(
        answer["error"].as_str().unwrap().contains("NUL"),
        "{answer}"
    );
}
