//! Bearer tokens: what is refused, how, and what a valid token provisions.

use jsonwebtoken::Algorithm;
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    now, sign, sign_with, spawn_app, spawn_app_with, unsigned_token, TestApp, TestOptions,
    TestResponse, ADMIN, AUTH_SECRET_KEY, USER,
};

const ME: &str = "/api/v1/users/me";

/// Asserts a 401 that asks for a bearer token and does not echo `token`.
#[track_caller]
fn assert_unauthorized(response: &TestResponse, token: &str) {
    response.assert_status(401);
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    let detail = response.detail();
    assert!(!detail.is_empty());
    if !token.is_empty() {
        assert!(
            !response.text.contains(token),
            "token echoed: {}",
            response.text
        );
    }
}

async fn me_with_header(app: &TestApp, value: &str) -> TestResponse {
    app.send(app.request(Method::GET, ME).header(AUTHORIZATION, value))
        .await
}

#[tokio::test]
async fn missing_token_is_401_not_authenticated() {
    let app = spawn_app().await;
    let response = app.get_public(ME).await;
    assert_unauthorized(&response, "");
    assert_eq!(response.detail(), "Not authenticated");
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn malformed_authorization_headers_are_401() {
    let app = spawn_app().await;
    let valid = app.token("alice", USER);
    for value in [
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        "Bearer not-a-jwt".to_owned(),
        "Bearer a.b.c".to_owned(),
        format!("Basic {valid}"),
        format!("Token {valid}"),
        valid.clone(),
        format!("Bearer {valid}x"),
    ] {
        let response = me_with_header(&app, &value).await;
        assert_unauthorized(&response, &valid);
        assert!(
            ["Not authenticated", "Could not validate credentials"]
                .contains(&response.detail().as_str()),
            "{value}: {}",
            response.detail()
        );
    }
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn the_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let token = app.token("alice", USER);
    me_with_header(&app, &format!("bearer {token}"))
        .await
        .assert_status(200);
}

#[tokio::test]
async fn expired_token_is_401_token_has_expired() {
    let app = spawn_app().await;
    let token = app.expired_token("alice");
    let response = app.get(ME, &token).await;
    assert_unauthorized(&response, &token);
    assert_eq!(response.detail(), "Token has expired");
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn a_token_within_the_leeway_is_accepted() {
    let app = spawn_app().await;
    let token = sign(&json!({ "sub": "alice", "exp": now() - 5 }));
    app.get(ME, &token).await.assert_status(200);
}

#[tokio::test]
async fn invalid_tokens_are_401_could_not_validate() {
    let app = spawn_app().await;
    let exp = now() + 3600;
    let cases = [
        ("wrong key", app.forged_token("root")),
        (
            "alg none",
            unsigned_token(&json!({ "sub": "root", "roles": ["admin"], "exp": exp })),
        ),
        (
            "HS512 with the same key",
            sign_with(
                Algorithm::HS512,
                AUTH_SECRET_KEY,
                &json!({ "sub": "root", "exp": exp }),
            ),
        ),
        (
            "HS384 with the same key",
            sign_with(
                Algorithm::HS384,
                AUTH_SECRET_KEY,
                &json!({ "sub": "root", "exp": exp }),
            ),
        ),
        ("no sub", sign(&json!({ "roles": ["admin"], "exp": exp }))),
        ("empty sub", sign(&json!({ "sub": "", "exp": exp }))),
        ("blank sub", sign(&json!({ "sub": "   ", "exp": exp }))),
        ("no exp", sign(&json!({ "sub": "root" }))),
        ("sub not a string", sign(&json!({ "sub": 42, "exp": exp }))),
        (
            "roles not a list",
            sign(&json!({ "sub": "root", "roles": "admin", "exp": exp })),
        ),
    ];
    for (case, token) in cases {
        let response = app.get(ME, &token).await;
        assert_unauthorized(&response, &token);
        assert_eq!(
            response.detail(),
            "Could not validate credentials",
            "{case}"
        );
    }
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn first_request_provisions_the_user_from_the_token() {
    let app = spawn_app().await;
    assert_eq!(app.count("users").await, 0);
    let token = app.token_with_email("alice", USER, "alice@example.com");
    let me = app.me(&token).await;
    assert_eq!(me["username"], "alice");
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["is_active"], true);
    assert_eq!(me["full_name"], serde_json::Value::Null);
    assert_eq!(me["id"].as_str().unwrap().len(), 16);
    assert_eq!(me["created_at"], me["updated_at"]);
    assert_eq!(app.count("users").await, 1);

    // Later requests find the same row.
    let again = app.me(&app.token("alice", USER)).await;
    assert_eq!(again["id"], me["id"]);
    assert_eq!(again["email"], "alice@example.com");
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn a_taken_email_does_not_block_provisioning() {
    let app = spawn_app().await;
    app.me(&app.token_with_email("alice", USER, "shared@example.com"))
        .await;
    let bob = app
        .me(&app.token_with_email("bob", USER, "shared@example.com"))
        .await;
    assert_eq!(bob["username"], "bob");
    assert_eq!(bob["email"], serde_json::Value::Null);
}

#[tokio::test]
async fn roles_default_to_none() {
    let app = spawn_app().await;
    let token = sign(&json!({ "sub": "alice", "exp": now() + 60 }));
    app.get(ME, &token).await.assert_status(200);
    app.get("/api/v1/users", &token).await.assert_status(403);
}

#[tokio::test]
async fn inactive_user_is_403() {
    let app = spawn_app().await;
    let admin = app.token("root", ADMIN);
    let alice = app.token("alice", USER);
    app.me(&alice).await;
    app.patch_json(
        "/api/v1/users/alice",
        &admin,
        &json!({ "is_active": false }),
    )
    .await
    .assert_status(200);
    let response = app.get(ME, &alice).await;
    response.assert_status(403);
    assert_eq!(response.detail(), "Inactive user");
    let response = app
        .post_json("/api/v1/users/me/conversations", &alice, &json!({}))
        .await;
    response.assert_status(403);
    assert_eq!(app.count("conversations").await, 0);

    app.patch_json("/api/v1/users/alice", &admin, &json!({ "is_active": true }))
        .await
        .assert_status(200);
    app.get(ME, &alice).await.assert_status(200);
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let app = spawn_app_with(TestOptions::new().settings(|s| {
        s.jwt_issuer = Some("auth-server".to_owned());
        s.jwt_audience = Some("chat-service".to_owned());
    }))
    .await;
    // The app's own tokens carry both claims.
    app.get(ME, &app.token("alice", USER))
        .await
        .assert_status(200);
    let exp = now() + 3600;
    let cases = [
        ("neither", json!({ "sub": "bob", "exp": exp })),
        (
            "no aud",
            json!({ "sub": "bob", "exp": exp, "iss": "auth-server" }),
        ),
        (
            "no iss",
            json!({ "sub": "bob", "exp": exp, "aud": "chat-service" }),
        ),
        (
            "wrong iss",
            json!({ "sub": "bob", "exp": exp, "iss": "evil", "aud": "chat-service" }),
        ),
        (
            "wrong aud",
            json!({ "sub": "bob", "exp": exp, "iss": "auth-server", "aud": "other" }),
        ),
    ];
    for (case, claims) in cases {
        let token = sign(&claims);
        let response = app.get(ME, &token).await;
        assert_unauthorized(&response, &token);
        assert_eq!(
            response.detail(),
            "Could not validate credentials",
            "{case}"
        );
    }
    let token =
        sign(&json!({ "sub": "bob", "exp": exp, "iss": "auth-server", "aud": "chat-service" }));
    app.get(ME, &token).await.assert_status(200);
}

#[tokio::test]
async fn issuer_and_audience_are_ignored_when_not_configured() {
    let app = spawn_app().await;
    let token = sign(&json!({ "sub": "bob", "exp": now() + 60, "iss": "x", "aud": "y" }));
    app.get(ME, &token).await.assert_status(200);
}
