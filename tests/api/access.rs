//! The access matrix: every route, every kind of caller, and nothing written when refused.

use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_safe_error, spawn_app, TestApp, ADMIN, MANAGER, USER};

/// Who calls: the owner of the data (alice), another user (bob), a manager, an admin,
/// nobody, and a caller with a token signed by another key.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Owner,
    Other,
    Manager,
    Admin,
    NoToken,
    BadToken,
}

/// Refusals first, so a successful delete cannot hide them.
const CALLERS: [Caller; 6] = [
    Caller::NoToken,
    Caller::BadToken,
    Caller::Other,
    Caller::Manager,
    Caller::Owner,
    Caller::Admin,
];

/// Expected statuses, in the order owner, other, manager, admin, no token, bad token.
type Expect = [u16; 6];
const PUBLIC: Expect = [200, 200, 200, 200, 200, 200];
const ANY_USER: Expect = [200, 200, 200, 200, 401, 401];
const STAFF: Expect = [403, 403, 200, 200, 401, 401];
const ADMIN_ONLY: Expect = [403, 403, 403, 200, 401, 401];
const ADMIN_CREATE: Expect = [403, 403, 403, 201, 401, 401];
const OWN_READ: Expect = [200, 403, 200, 200, 401, 401];
const OWN_WRITE: Expect = [200, 403, 403, 200, 401, 401];
const OWN_CREATE: Expect = [201, 403, 403, 201, 401, 401];
/// Message routes have no owner in the path: others find nothing.
const MESSAGE_READ: Expect = [200, 404, 200, 200, 401, 401];
const MESSAGE_CREATE: Expect = [201, 404, 404, 201, 401, 401];

fn expected(expect: &Expect, caller: Caller) -> u16 {
    match caller {
        Caller::Owner => expect[0],
        Caller::Other => expect[1],
        Caller::Manager => expect[2],
        Caller::Admin => expect[3],
        Caller::NoToken => expect[4],
        Caller::BadToken => expect[5],
    }
}

/// A route with placeholders `{user}` (alice's public ID) and `{conversation}` (a fresh
/// conversation of alice's with one message), and its JSON body.
struct Route {
    method: Method,
    path: &'static str,
    body: Option<&'static str>,
    expect: Expect,
}

fn route(method: Method, path: &'static str, expect: Expect) -> Route {
    Route {
        method,
        path,
        body: None,
        expect,
    }
}

fn with_body(method: Method, path: &'static str, body: &'static str, expect: Expect) -> Route {
    Route {
        method,
        path,
        body: Some(body),
        expect,
    }
}

fn routes() -> Vec<Route> {
    vec![
        route(Method::GET, "/", PUBLIC),
        route(Method::GET, "/health", PUBLIC),
        route(Method::GET, "/api/v1/chat/health", PUBLIC),
        route(Method::GET, "/openapi.json", PUBLIC),
        with_body(
            Method::POST,
            "/api/v1/users",
            r#"{"email": "new@example.com", "username": "newbie"}"#,
            ADMIN_CREATE,
        ),
        route(Method::GET, "/api/v1/users", STAFF),
        route(Method::GET, "/api/v1/users/me", ANY_USER),
        route(Method::GET, "/api/v1/users/{user}", OWN_READ),
        with_body(
            Method::PATCH,
            "/api/v1/users/{user}",
            r#"{"full_name": "Changed", "is_active": false}"#,
            ADMIN_ONLY,
        ),
        route(Method::DELETE, "/api/v1/users/{user}", ADMIN_ONLY),
        route(Method::DELETE, "/api/v1/admin/users/alice", ADMIN_ONLY),
        with_body(
            Method::POST,
            "/api/v1/users/{user}/conversations",
            r#"{"title": "created"}"#,
            OWN_CREATE,
        ),
        route(Method::GET, "/api/v1/users/{user}/conversations", OWN_READ),
        route(
            Method::GET,
            "/api/v1/users/{user}/conversations/recent",
            OWN_READ,
        ),
        route(
            Method::GET,
            "/api/v1/users/{user}/conversations/{conversation}",
            OWN_READ,
        ),
        with_body(
            Method::PATCH,
            "/api/v1/users/{user}/conversations/{conversation}",
            r#"{"title": "changed", "status": "archived"}"#,
            OWN_WRITE,
        ),
        with_body(
            Method::PUT,
            "/api/v1/users/{user}/conversations/{conversation}",
            r#"{"title": "changed", "context_metadata": {"x": 1}}"#,
            OWN_WRITE,
        ),
        route(
            Method::DELETE,
            "/api/v1/users/{user}/conversations/{conversation}",
            OWN_WRITE,
        ),
        route(
            Method::POST,
            "/api/v1/users/{user}/conversations/{conversation}/reconnect",
            OWN_WRITE,
        ),
        route(
            Method::GET,
            "/api/v1/users/{user}/conversations/{conversation}/validate",
            OWN_READ,
        ),
        route(
            Method::POST,
            "/api/v1/users/{user}/conversations/{conversation}/end",
            OWN_WRITE,
        ),
        route(
            Method::GET,
            "/api/v1/users/{user}/conversations/{conversation}/stats",
            OWN_READ,
        ),
        route(
            Method::GET,
            "/api/v1/users/{user}/conversations/{conversation}/export?format=markdown",
            OWN_READ,
        ),
        with_body(
            Method::POST,
            "/api/v1/conversations/{conversation}/messages",
            r#"{"role": "user", "content": "intruder"}"#,
            MESSAGE_CREATE,
        ),
        route(
            Method::GET,
            "/api/v1/conversations/{conversation}/messages",
            MESSAGE_READ,
        ),
        route(Method::GET, "/api/v1/admin/conversations", ADMIN_ONLY),
        route(
            Method::DELETE,
            "/api/v1/admin/conversations/{conversation}",
            ADMIN_ONLY,
        ),
    ]
}

/// The tokens of every caller, each already provisioned.
struct Callers {
    owner: String,
    other: String,
    manager: String,
    admin: String,
    forged: String,
    owner_id: String,
}

impl Callers {
    async fn new(app: &TestApp) -> Self {
        let callers = Self {
            owner: app.token("alice", USER),
            other: app.token("bob", USER),
            manager: app.token("mia", MANAGER),
            admin: app.token("root", ADMIN),
            forged: app.forged_token("alice"),
            owner_id: String::new(),
        };
        for token in [&callers.other, &callers.manager, &callers.admin] {
            app.me(token).await;
        }
        let owner_id = app.me(&callers.owner).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        Self {
            owner_id,
            ..callers
        }
    }

    fn token(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::Owner => Some(&self.owner),
            Caller::Other => Some(&self.other),
            Caller::Manager => Some(&self.manager),
            Caller::Admin => Some(&self.admin),
            Caller::NoToken => None,
            Caller::BadToken => Some(&self.forged),
        }
    }
}

/// Runs one route for every caller on its own app; returns the mismatches.
async fn check(route: Route) -> Vec<String> {
    let app = spawn_app().await;
    let callers = Callers::new(&app).await;
    let body: Option<Value> = route.body.map(|b| serde_json::from_str(b).unwrap());
    let mut failures = Vec::new();
    for caller in CALLERS {
        let conversation = app
            .create_conversation(&callers.owner, &json!({ "title": "alice's" }))
            .await;
        let conversation = conversation["id"].as_str().unwrap();
        app.say(&callers.owner, conversation, "user", "private")
            .await;
        let path = route
            .path
            .replace("{user}", &callers.owner_id)
            .replace("{conversation}", conversation);
        let before = app.snapshot().await;
        let response = app
            .call(
                route.method.clone(),
                &path,
                callers.token(caller),
                body.as_ref(),
            )
            .await;
        let want = expected(&route.expect, caller);
        let label = format!("{} {} as {caller:?}", route.method, route.path);
        if response.status != want {
            failures.push(format!(
                "{label}: {} (want {want}): {}",
                response.status, response.text
            ));
            continue;
        }
        if response.status.is_client_error() {
            assert_safe_error(&response);
            assert!(
                !response.text.contains("private"),
                "{label} leaks: {}",
                response.text
            );
            if response.status == 401 {
                assert_eq!(
                    response.header("www-authenticate"),
                    Some("Bearer"),
                    "{label}"
                );
            }
            if app.snapshot().await != before {
                failures.push(format!("{label}: refused but the database changed"));
            }
        }
    }
    failures
}

#[tokio::test]
async fn every_route_answers_every_caller_as_the_matrix_says() {
    let failures: Vec<String> = join_all(routes().into_iter().map(check))
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Conversation routes reached through the caller's own path: someone else's conversation
/// is simply not found there, whatever the caller's role.
#[tokio::test]
async fn someone_elses_conversation_is_not_found_through_ones_own_path() {
    let app = spawn_app().await;
    let callers = Callers::new(&app).await;
    let conversation = app.create_conversation(&callers.owner, &json!({})).await;
    let cid = conversation["id"].as_str().unwrap();
    app.say(&callers.owner, cid, "user", "private").await;
    let before = app.snapshot().await;
    let routes = [
        (Method::GET, ""),
        (Method::PATCH, ""),
        (Method::PUT, ""),
        (Method::DELETE, ""),
        (Method::POST, "/reconnect"),
        (Method::GET, "/validate"),
        (Method::POST, "/end"),
        (Method::GET, "/stats"),
        (Method::GET, "/export"),
    ];
    for token in [&callers.other, &callers.manager, &callers.admin] {
        for (method, suffix) in &routes {
            let path = format!("/api/v1/users/me/conversations/{cid}{suffix}");
            let body = json!({ "title": "hijacked" });
            let response = app
                .call(method.clone(), &path, Some(token), Some(&body))
                .await;
            assert_eq!(response.status, 404, "{method} {path}: {}", response.text);
            assert_eq!(response.detail(), "Conversation not found");
        }
    }
    // An admin naming another owner in the path does not reach it either.
    app.me(&app.token("bob", USER)).await;
    let path = format!("/api/v1/users/bob/conversations/{cid}");
    app.get(&path, &callers.admin).await.assert_status(404);
    app.delete(&path, &callers.admin).await.assert_status(404);
    assert_eq!(app.snapshot().await, before);
    // Nor do lists show it.
    for token in [&callers.other, &callers.manager] {
        let list = app.get("/api/v1/users/me/conversations", token).await;
        assert_eq!(list.json(), json!([]));
        assert_eq!(list.total(), 0);
    }
}
