//! Service information, health, and the API documentation.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{assert_safe_error, now, sign, spawn_app, spawn_app_with, TestOptions, ADMIN};
use crate::test_database::TestDatabase;

#[tokio::test]
async fn root_describes_the_service() {
    let app = spawn_app().await;
    let body = app.get_public("/").await.assert_status(200).json();
    assert_eq!(body["service"], "chat-service");
    assert_eq!(body["status"], "running");
    assert_eq!(body["docs"], "/docs");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn health_pings_the_database() {
    let app = spawn_app().await;
    let response = app.get_public("/health").await;
    response.assert_status(200);
    let body = response.json();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["database"], "connected");
    assert_eq!(body["llm_provider"], "echo");
    assert_eq!(body["llm_model"], "gpt-4o-mini");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
}

/// On PostgreSQL, whose database can be taken away under the running server.
#[tokio::test]
async fn health_is_503_when_the_database_is_unreachable() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let app = spawn_app_with(TestOptions::new().database(database)).await;
    app.drop_database().await;
    let response = app.get_public("/health").await;
    response.assert_status(503);
    let body = response.json();
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["database"], "unreachable");

    // Other routes fail with a generic 500 that says nothing about the database.
    let token = app.token("alice", ADMIN);
    let response = app.get("/api/v1/users/me", &token).await;
    response.assert_status(500);
    assert_eq!(response.detail(), "Internal server error");
    assert_safe_error(&response);
}

#[tokio::test]
async fn chat_health_reports_the_provider_and_models() {
    let app = spawn_app().await;
    let body = app
        .get_public("/api/v1/chat/health")
        .await
        .assert_status(200)
        .json();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["llm_provider"], "echo");
    assert_eq!(body["llm_model"], "gpt-4o-mini");
    assert_eq!(body["allowed_models"], serde_json::json!(["gpt-4o-mini"]));
}

/// Every route of the REST API, as the OpenAPI document names it.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/health"),
    ("get", "/api/v1/chat/health"),
    ("post", "/api/v1/users"),
    ("get", "/api/v1/users"),
    ("get", "/api/v1/users/me"),
    ("get", "/api/v1/users/{user_id}"),
    ("patch", "/api/v1/users/{user_id}"),
    ("delete", "/api/v1/users/{user_id}"),
    ("post", "/api/v1/users/{user_id}/conversations"),
    ("get", "/api/v1/users/{user_id}/conversations"),
    ("get", "/api/v1/users/{user_id}/conversations/recent"),
    (
        "get",
        "/api/v1/users/{user_id}/conversations/{conversation_id}",
    ),
    (
        "patch",
        "/api/v1/users/{user_id}/conversations/{conversation_id}",
    ),
    (
        "put",
        "/api/v1/users/{user_id}/conversations/{conversation_id}",
    ),
    (
        "delete",
        "/api/v1/users/{user_id}/conversations/{conversation_id}",
    ),
    (
        "post",
        "/api/v1/users/{user_id}/conversations/{conversation_id}/reconnect",
    ),
    (
        "get",
        "/api/v1/users/{user_id}/conversations/{conversation_id}/validate",
    ),
    (
        "post",
        "/api/v1/users/{user_id}/conversations/{conversation_id}/end",
    ),
    (
        "get",
        "/api/v1/users/{user_id}/conversations/{conversation_id}/stats",
    ),
    (
        "get",
        "/api/v1/users/{user_id}/conversations/{conversation_id}/export",
    ),
    ("post", "/api/v1/conversations/{conversation_id}/messages"),
    ("get", "/api/v1/conversations/{conversation_id}/messages"),
    ("get", "/api/v1/admin/conversations"),
    ("delete", "/api/v1/admin/conversations/{conversation_id}"),
    ("delete", "/api/v1/admin/users/{username}"),
];

#[tokio::test]
async fn openapi_lists_every_route_and_the_bearer_scheme() {
    let app = spawn_app().await;
    let document = app
        .get_public("/openapi.json")
        .await
        .assert_status(200)
        .json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for (method, path) in ROUTES {
        let operation = &paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} missing from the document"))[*method];
        assert!(operation.is_object(), "{method} {path} missing");
        let public = ["/", "/health", "/api/v1/chat/health"].contains(path);
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        assert_eq!(secured, !public, "security of {method} {path}");
    }
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    assert!(document["components"]["schemas"]["ErrorBody"].is_object());
}

/// Script sources and stylesheets of a page, which must all be served by the service.
fn assets(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for part in html.split(attribute).skip(1) {
            found.push(part.split('"').next().unwrap().to_owned());
        }
    }
    found
}

#[tokio::test]
async fn swagger_ui_is_served_without_internet() {
    let app = spawn_app().await;
    let redirect = app.get_public("/docs").await;
    assert!(redirect.status.is_redirection(), "{}", redirect.status);
    let page = app
        .get_public("/docs/")
        .await
        .assert_status(200)
        .text
        .clone();
    assert!(page.contains("swagger-ui"), "{page}");
    let assets = assets(&page);
    assert!(!assets.is_empty());
    for asset in assets {
        assert!(!asset.starts_with("http"), "external asset {asset}");
        let path = format!("/docs/{}", asset.trim_start_matches("./"));
        app.get_public(&path).await.assert_status(200);
    }
    let bundle = app.get_public("/docs/swagger-ui-bundle.js").await;
    bundle.assert_status(200);
    assert!(bundle.text.len() > 100_000);
    let initializer = app.get_public("/docs/swagger-initializer.js").await;
    assert!(initializer
        .assert_status(200)
        .text
        .contains("/openapi.json"));
}

#[tokio::test]
async fn redoc_is_served_with_its_bundled_script() {
    let app = spawn_app().await;
    let page = app.get_public("/redoc").await;
    page.assert_status(200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(assets(&page.text), vec!["/redoc/redoc.standalone.js"]);
    // The document is inlined: the page needs nothing from the network.
    assert!(page.text.contains("\"/api/v1/users/me\""));
    let script = app.get_public("/redoc/redoc.standalone.js").await;
    script.assert_status(200);
    assert_eq!(
        script.header("content-type"),
        Some("application/javascript")
    );
    assert!(script.text.len() > 100_000);
}

#[tokio::test]
async fn starts_with_no_configuration_but_the_database() {
    let options = TestOptions::new()
        .without_secret()
        .settings(|settings| assert!(settings.auth_secret_key.is_none()));
    let app = spawn_app_with(options).await;
    // The key was generated for this run: it signs a working admin token.
    let admin_token = app.token("admin", ADMIN);

    app.get_public("/health").await.assert_status(200);
    let me = app
        .get("/api/v1/users/me", &admin_token)
        .await
        .assert_status(200)
        .json();
    assert_eq!(me["username"], "admin");
    app.get("/api/v1/users", &admin_token)
        .await
        .assert_status(200);
    // A token signed with any other key, such as the suite's usual secret, is refused.
    let foreign =
        sign(&serde_json::json!({ "sub": "admin", "roles": ["admin"], "exp": now() + 60 }));
    app.get("/api/v1/users/me", &foreign)
        .await
        .assert_status(401);
}

#[tokio::test]
async fn errors_never_contain_internal_text() {
    let app = spawn_app().await;
    let token = app.token("alice", ADMIN);
    let conversation = app
        .create_conversation(&token, &serde_json::json!({}))
        .await;
    let id = conversation["id"].as_str().unwrap();
    let requests: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/nowhere".into(), None),
        (Method::GET, "/api/v1/users/nobody".into(), None),
        (
            Method::GET,
            "/api/v1/users/me/conversations/'%20OR%201=1--".into(),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/users/me/conversations/{id}x"),
            None,
        ),
        (
            Method::GET,
            "/api/v1/users/me/conversations?limit=abc".into(),
            None,
        ),
        (
            Method::GET,
            "/api/v1/users/me/conversations?status=deleted".into(),
            None,
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(serde_json::json!({"username": "x"})),
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(serde_json::json!({"username": "alice", "email": "a@example.com"})),
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{id}/messages"),
            Some(serde_json::json!({"role": "robot", "content": "x"})),
        ),
        (
            Method::DELETE,
            "/api/v1/users/me/conversations/zzzzzzzzzzzz".into(),
            None,
        ),
        (Method::PATCH, "/health".into(), None),
    ];
    for (method, path, body) in requests {
        let response = app
            .call(method.clone(), &path, Some(&token), body.as_ref())
            .await;
        assert!(
            response.status.is_client_error(),
            "{method} {path}: {}",
            response.status
        );
        assert_safe_error(&response);
    }
}

#[tokio::test]
async fn the_server_stops_on_its_shutdown_signal() {
    let app = spawn_app().await;
    app.get_public("/health").await.assert_status(200);
    let address = app.address.trim_start_matches("http://").to_owned();
    app.stop().await;
    assert!(tokio::net::TcpStream::connect(&address).await.is_err());
}
