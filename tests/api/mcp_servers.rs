//! `/api/v1/mcp-servers` and `/api/v1/admin/mcp-servers`: the MCP server registry.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::db::{McpServerFilter, Page, Scope};
use crate::helpers::{assert_safe_error, spawn_app, TestApp, TestResponse, ADMIN, MANAGER, USER};

const SERVERS: &str = "/api/v1/mcp-servers";
const ALL_SERVERS: &str = "/api/v1/admin/mcp-servers";
/// The key every test registers: it must never come back.
const API_KEY: &str = "sk-mcp-write-only-5f3a9c";

fn server_body(name: &str) -> Value {
    json!({
        "name": name,
        "description": "Time zones",
        "server_url": "https://mcp.example.com/mcp",
        "config": { "timeout": 5 },
        "api_key": API_KEY,
    })
}

/// Registers a server for the token's user and returns it.
async fn register(app: &TestApp, token: &str, body: &Value) -> Value {
    let response = app.post_json(SERVERS, token, body).await;
    assert_no_key(&response);
    response.assert_status(201).json()
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("a public ID").to_owned()
}

fn ids(response: &TestResponse) -> Vec<String> {
    response
        .json()
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(id)
        .collect()
}

/// Asserts that an answer says nothing of the API key.
#[track_caller]
fn assert_no_key(response: &TestResponse) {
    assert!(
        !response.text.contains(API_KEY) && !response.text.contains("api_key"),
        "the API key is answered: {}",
        response.text
    );
}

/// The stored API keys of a user's active servers, by the store's one read of them.
async fn stored_keys(app: &TestApp, username: &str) -> Vec<Option<String>> {
    let store = &app.state.store;
    let user = store.user_by_username(username).await.unwrap().unwrap();
    let servers = store.active_mcp_servers_with_keys(user.id).await.unwrap();
    servers
        .iter()
        .map(|s| s.api_key.as_ref().map(|k| k.expose().to_owned()))
        .collect()
}

/// Every stored server, whoever owns it.
async fn stored_count(app: &TestApp) -> i64 {
    let filter = McpServerFilter {
        active_only: false,
        page: Page {
            skip: 0,
            limit: 1000,
        },
    };
    let (_, total) = app
        .state
        .store
        .list_mcp_servers(Scope::Anyone, &filter)
        .await
        .unwrap();
    total
}

#[tokio::test]
async fn registering_answers_201_without_the_api_key() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let me = app.my_id(&alice).await;
    let created = register(&app, &alice, &server_body("Clock")).await;

    let mut fields: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "config",
            "created_at",
            "description",
            "id",
            "is_active",
            "name",
            "server_url",
            "updated_at",
            "user_id"
        ]
    );
    assert_eq!(id(&created).len(), 10);
    assert_eq!(created["user_id"], me.as_str());
    assert_eq!(created["name"], "Clock");
    assert_eq!(created["description"], "Time zones");
    assert_eq!(created["server_url"], "https://mcp.example.com/mcp");
    assert_eq!(created["is_active"], true);
    assert_eq!(created["config"], json!({ "timeout": 5 }));
    assert_eq!(created["created_at"], created["updated_at"]);
    assert_eq!(stored_keys(&app, "alice").await, [Some(API_KEY.to_owned())]);

    // The smallest body, and an inactive server.
    let minimal = json!({ "name": " Bare ", "server_url": "http://127.0.0.1:8080/mcp" });
    let bare = register(&app, &alice, &minimal).await;
    assert_eq!(bare["name"], "Bare");
    assert_eq!(bare["description"], Value::Null);
    assert_eq!(bare["config"], Value::Null);
    let body =
        json!({ "name": "Off", "server_url": "https://off.example.com", "is_active": false });
    assert_eq!(register(&app, &alice, &body).await["is_active"], false);
    // Only active servers are read with their keys; the bare one has none.
    assert_eq!(
        stored_keys(&app, "alice").await,
        [Some(API_KEY.to_owned()), None]
    );
}

#[tokio::test]
async fn the_api_key_is_in_no_answer() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let admin = app.token("root", ADMIN);
    let server = id(&register(&app, &alice, &server_body("Clock")).await);
    let one = format!("{SERVERS}/{server}");
    let change = json!({ "name": "Clock 2", "api_key": API_KEY });
    let answers = [
        app.get(SERVERS, &alice).await,
        app.get(&format!("{SERVERS}?active_only=true"), &alice)
            .await,
        app.get(&one, &alice).await,
        app.get(&one, &admin).await,
        app.patch_json(&one, &alice, &change).await,
        app.put_json(&one, &admin, &change).await,
        app.get(ALL_SERVERS, &admin).await,
        app.get_public("/openapi.json").await,
        app.delete(&one, &alice).await,
    ];
    for answer in &answers {
        answer.assert_status(200);
        assert!(
            !answer.text.contains(API_KEY),
            "key answered: {}",
            answer.text
        );
    }
    for answer in &answers[..answers.len() - 2] {
        assert!(!answer.text.contains("\"api_key\":"), "{}", answer.text);
    }
}

#[tokio::test]
async fn only_the_owner_and_admins_reach_a_server() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    // Another user and a manager find nothing: a server's configuration is its owner's.
    let callers = [
        ("another user", app.token("bob", USER), 404),
        ("a manager", app.token("mona", MANAGER), 404),
        ("the owner", alice.clone(), 200),
        ("an admin", app.token("root", ADMIN), 200),
    ];
    let patch = json!({ "description": "changed" });
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(&patch)),
        (Method::PUT, Some(&patch)),
        (Method::DELETE, None),
    ] {
        for (who, token, status) in &callers {
            // A fresh server for every call, so a delete hides nothing after it.
            let server = id(&register(&app, &alice, &server_body("Clock")).await);
            let path = format!("{SERVERS}/{server}");
            let before = app.get(&path, &alice).await.json();
            let response = app.call(method.clone(), &path, Some(token), body).await;
            assert_eq!(
                response.status, *status,
                "{method} by {who}: {}",
                response.text
            );
            assert_no_key(&response);
            if *status == 404 {
                assert_safe_error(&response);
                assert_eq!(response.detail(), "MCP server not found");
                // Nothing changed or went away.
                assert_eq!(app.get(&path, &alice).await.json(), before);
            }
        }
    }

    // Without a token, or with a forged one: 401 on every route.
    let server = id(&register(&app, &alice, &server_body("Clock")).await);
    let one = format!("{SERVERS}/{server}");
    for token in [None, Some(app.forged_token("root"))] {
        for (method, path) in [
            (Method::POST, SERVERS),
            (Method::GET, SERVERS),
            (Method::GET, ALL_SERVERS),
            (Method::GET, one.as_str()),
            (Method::PATCH, one.as_str()),
            (Method::PUT, one.as_str()),
            (Method::DELETE, one.as_str()),
        ] {
            let body = server_body("x");
            let response = app
                .call(method.clone(), path, token.as_deref(), Some(&body))
                .await;
            assert_eq!(response.status, 401, "{method} {path}: {}", response.text);
            assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        }
    }
}

#[tokio::test]
async fn lists_hold_the_callers_own_and_admins_see_all() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let bob = app.token("bob", USER);
    let manager = app.token("mona", MANAGER);
    let admin = app.token("root", ADMIN);
    let a1 = id(&register(&app, &alice, &server_body("a1")).await);
    let body = json!({ "name": "a2", "server_url": "https://a2.example.com", "is_active": false });
    let a2 = id(&register(&app, &alice, &body).await);
    let a3 = id(&register(&app, &alice, &server_body("a3")).await);
    let b1 = id(&register(&app, &bob, &server_body("b1")).await);

    let mine = app.get(SERVERS, &alice).await;
    mine.assert_status(200);
    assert_eq!(ids(&mine), [a1.as_str(), a2.as_str(), a3.as_str()]);
    assert_eq!(mine.total(), 3);
    let active = app
        .get(&format!("{SERVERS}?active_only=true"), &alice)
        .await;
    assert_eq!(ids(&active), [a1.as_str(), a3.as_str()]);
    assert_eq!(active.total(), 2);
    let paged = app.get(&format!("{SERVERS}?skip=1&limit=1"), &alice).await;
    assert_eq!(ids(&paged), [a2.as_str()]);
    assert_eq!(paged.total(), 3);
    let past_the_end = app.get(&format!("{SERVERS}?skip=10"), &alice).await;
    assert_eq!(ids(&past_the_end), Vec::<String>::new());
    assert_eq!(past_the_end.total(), 3);
    assert_eq!(ids(&app.get(SERVERS, &bob).await), [b1.as_str()]);
    // Managers and admins list their own here too.
    assert_eq!(app.get(SERVERS, &manager).await.total(), 0);
    assert_eq!(app.get(SERVERS, &admin).await.total(), 0);

    // The admin list holds everyone's.
    let all = app.get(ALL_SERVERS, &admin).await;
    all.assert_status(200);
    assert_eq!(
        ids(&all),
        [a1.as_str(), a2.as_str(), a3.as_str(), b1.as_str()]
    );
    assert_eq!(all.total(), 4);
    let all_active = app
        .get(&format!("{ALL_SERVERS}?active_only=true&limit=2"), &admin)
        .await;
    assert_eq!(ids(&all_active), [a1.as_str(), a3.as_str()]);
    assert_eq!(all_active.total(), 3);
    for token in [&alice, &manager] {
        let refused = app.get(ALL_SERVERS, token).await;
        refused.assert_status(403);
        assert_safe_error(&refused);
    }
}

#[tokio::test]
async fn patch_and_put_change_only_the_fields_given() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let created = register(&app, &alice, &server_body("Clock")).await;
    let one = format!("{SERVERS}/{}", id(&created));

    let renamed = app
        .patch_json(&one, &alice, &json!({ "name": "Clock 2" }))
        .await
        .assert_status(200)
        .json();
    assert_eq!(renamed["name"], "Clock 2");
    for kept in [
        "description",
        "server_url",
        "is_active",
        "config",
        "created_at",
    ] {
        assert_eq!(renamed[kept], created[kept], "{kept}");
    }
    assert_ne!(renamed["updated_at"], created["updated_at"]);
    assert_eq!(stored_keys(&app, "alice").await, [Some(API_KEY.to_owned())]);

    // An empty key is a form's untouched field: the stored key stays.
    let body = json!({ "server_url": "http://mcp.internal:9000/rpc", "api_key": "" });
    let moved = app
        .put_json(&one, &alice, &body)
        .await
        .assert_status(200)
        .json();
    assert_eq!(moved["server_url"], "http://mcp.internal:9000/rpc");
    assert_eq!(moved["name"], "Clock 2");
    assert_eq!(stored_keys(&app, "alice").await, [Some(API_KEY.to_owned())]);

    // A new key replaces it.
    app.patch_json(&one, &alice, &json!({ "api_key": "sk-new" }))
        .await
        .assert_status(200);
    assert_eq!(
        stored_keys(&app, "alice").await,
        [Some("sk-new".to_owned())]
    );

    // `null` clears what may be empty.
    let body = json!({ "description": null, "config": null, "api_key": null });
    let cleared = app
        .patch_json(&one, &alice, &body)
        .await
        .assert_status(200)
        .json();
    assert_eq!(cleared["description"], Value::Null);
    assert_eq!(cleared["config"], Value::Null);
    assert_eq!(cleared["name"], "Clock 2");
    assert_eq!(stored_keys(&app, "alice").await, [None]);

    // Deactivated, it is no longer read for chats.
    let body = json!({ "is_active": false, "config": { "a": [1] } });
    let off = app
        .put_json(&one, &alice, &body)
        .await
        .assert_status(200)
        .json();
    assert_eq!(off["is_active"], false);
    assert_eq!(off["config"], json!({ "a": [1] }));
    assert!(stored_keys(&app, "alice").await.is_empty());

    // An empty change changes nothing but the time.
    let same = app
        .patch_json(&one, &alice, &json!({}))
        .await
        .assert_status(200)
        .json();
    assert_eq!(same["name"], off["name"]);
    assert_eq!(same["is_active"], false);
}

#[tokio::test]
async fn invalid_fields_are_422_naming_the_field_and_store_nothing() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let url = "https://mcp.example.com";
    let cases = [
        (json!({ "server_url": url }), "name"),
        (json!({ "name": "", "server_url": url }), "name"),
        (json!({ "name": "   ", "server_url": url }), "name"),
        (
            json!({ "name": "n".repeat(256), "server_url": url }),
            "name",
        ),
        (json!({ "name": 5, "server_url": url }), "name"),
        (json!({ "name": "x" }), "server_url"),
        (json!({ "name": "x", "server_url": "" }), "server_url"),
        (
            json!({ "name": "x", "server_url": "ftp://mcp.example.com" }),
            "server_url",
        ),
        (
            json!({ "name": "x", "server_url": "javascript:alert(1)" }),
            "server_url",
        ),
        (
            json!({ "name": "x", "server_url": "file:///etc/passwd" }),
            "server_url",
        ),
        (
            json!({ "name": "x", "server_url": "mcp.example.com" }),
            "server_url",
        ),
        (
            json!({ "name": "x", "server_url": "https://" }),
            "server_url",
        ),
        (
            json!({ "name": "x", "server_url": format!("{url}/{}", "p".repeat(500)) }),
            "server_url",
        ),
        (
            json!({ "name": "x", "server_url": "https://user:secret@mcp.example.com" }),
            "server_url",
        ),
        (
            json!({ "name": "x", "server_url": url, "config": [1, 2] }),
            "config",
        ),
        (
            json!({ "name": "x", "server_url": url, "config": "text" }),
            "config",
        ),
        (
            json!({ "name": "x", "server_url": url, "is_active": "yes" }),
            "is_active",
        ),
        (
            json!({ "name": "x", "server_url": url, "description": "d".repeat(2001) }),
            "description",
        ),
        (
            json!({ "name": "x", "server_url": url, "api_key": 42 }),
            "api_key",
        ),
        (
            json!({ "name": "x", "server_url": url, "api_key": "k".repeat(4097) }),
            "api_key",
        ),
    ];
    for (body, field) in &cases {
        let response = app.post_json(SERVERS, &alice, body).await;
        assert_eq!(response.status, 422, "{body}: {}", response.text);
        assert_safe_error(&response);
        assert!(
            response.detail().contains(field),
            "{body}: {:?} does not name {field}",
            response.detail()
        );
    }
    assert_eq!(stored_count(&app).await, 0);

    // The same checks on a change, which then changes nothing.
    let created = register(&app, &alice, &server_body("Clock")).await;
    let one = format!("{SERVERS}/{}", id(&created));
    for (body, field) in [
        (json!({ "name": "" }), "name"),
        (json!({ "name": "n".repeat(256) }), "name"),
        (
            json!({ "server_url": "gopher://x.example.com" }),
            "server_url",
        ),
        (json!({ "config": [] }), "config"),
        (
            json!({ "is_active": null, "description": 5 }),
            "description",
        ),
    ] {
        for method in [Method::PATCH, Method::PUT] {
            let response = app
                .call(method.clone(), &one, Some(&alice), Some(&body))
                .await;
            assert_eq!(response.status, 422, "{method} {body}: {}", response.text);
            assert!(response.detail().contains(field), "{}", response.detail());
        }
    }
    assert_eq!(app.get(&one, &alice).await.json(), created);

    // Pages and filters of the lists.
    let admin = app.token("root", ADMIN);
    for query in ["skip=-1", "limit=0", "limit=1001", "active_only=maybe"] {
        for path in [SERVERS, ALL_SERVERS] {
            let response = app.get(&format!("{path}?{query}"), &admin).await;
            assert_eq!(response.status, 422, "{path}?{query}: {}", response.text);
            let name = query.split('=').next().unwrap();
            assert!(response.detail().contains(name), "{}", response.detail());
        }
    }
}

#[tokio::test]
async fn unknown_malformed_and_other_kinds_of_ids_are_404() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let admin = app.token("root", ADMIN);
    let server = id(&register(&app, &alice, &server_body("Clock")).await);
    let conversation = app.new_conversation(&alice).await;
    let message = app.say(&alice, &conversation, "user", "hi").await;
    let unknown = app.state.ids.mcp_server.encode(9_999);
    for raw in [
        unknown.as_str(),
        "nope",
        conversation.as_str(),
        message["id"].as_str().unwrap(),
        "%FF",
    ] {
        let path = format!("{SERVERS}/{raw}");
        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            let body = json!({ "name": "x" });
            let response = app
                .call(method.clone(), &path, Some(&admin), Some(&body))
                .await;
            assert_eq!(response.status, 404, "{method} {path}: {}", response.text);
            assert_safe_error(&response);
        }
    }
    // Deleting twice: the second finds nothing.
    let one = format!("{SERVERS}/{server}");
    let deleted = app.delete(&one, &alice).await.assert_status(200).json();
    assert_eq!(
        deleted,
        json!({ "message": "MCP server deleted successfully", "server_id": server })
    );
    app.delete(&one, &alice).await.assert_status(404);
    app.get(&one, &alice).await.assert_status(404);
    assert_eq!(stored_count(&app).await, 0);
}

#[tokio::test]
async fn deleting_a_user_deletes_their_servers() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let bob = app.token("bob", USER);
    let admin = app.token("root", ADMIN);
    let alice_id = app.my_id(&alice).await;
    register(&app, &alice, &server_body("a1")).await;
    register(&app, &alice, &server_body("a2")).await;
    let kept = id(&register(&app, &bob, &server_body("b1")).await);
    assert_eq!(stored_count(&app).await, 3);

    app.delete(&format!("/api/v1/users/{alice_id}"), &admin)
        .await
        .assert_status(200);
    assert_eq!(stored_count(&app).await, 1);
    assert_eq!(ids(&app.get(ALL_SERVERS, &admin).await), [kept]);

    // The same through the admin route by username.
    app.delete("/api/v1/admin/users/bob", &admin)
        .await
        .assert_status(200);
    assert_eq!(stored_count(&app).await, 0);
}

#[tokio::test]
async fn openapi_documents_the_registry_and_a_write_only_key() {
    let app = spawn_app().await;
    let document = app.get_public("/openapi.json").await.json();
    let paths = &document["paths"];
    let declared = |path: &str, method: &str| -> Vec<String> {
        let operation = &paths[path][method];
        assert!(operation.is_object(), "{method} {path} missing");
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        assert!(secured, "{method} {path} without the bearer scheme");
        operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    for (path, method, statuses) in [
        (
            "/api/v1/mcp-servers",
            "post",
            &["201", "401", "403", "422"][..],
        ),
        ("/api/v1/mcp-servers", "get", &["200", "401", "403", "422"]),
        (
            "/api/v1/admin/mcp-servers",
            "get",
            &["200", "401", "403", "422"],
        ),
        (
            "/api/v1/mcp-servers/{server_id}",
            "get",
            &["200", "401", "403", "404"],
        ),
        (
            "/api/v1/mcp-servers/{server_id}",
            "patch",
            &["200", "401", "403", "404", "422"],
        ),
        (
            "/api/v1/mcp-servers/{server_id}",
            "put",
            &["200", "401", "403", "404", "422"],
        ),
        (
            "/api/v1/mcp-servers/{server_id}",
            "delete",
            &["200", "401", "403", "404"],
        ),
    ] {
        let answers = declared(path, method);
        for status in statuses {
            assert!(
                answers.iter().any(|a| a == status),
                "{method} {path} does not declare {status}: {answers:?}"
            );
        }
    }
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["McpServerCreate"]["properties"]["api_key"]["writeOnly"],
        true
    );
    assert_eq!(
        schemas["McpServerUpdate"]["properties"]["api_key"]["writeOnly"],
        true
    );
    assert!(schemas["McpServerOut"]["properties"]["server_url"].is_object());
    assert!(schemas["McpServerOut"]["properties"]
        .get("api_key")
        .is_none());
}

#[tokio::test]
async fn a_stored_key_does_not_show_in_debug_output() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    register(&app, &alice, &server_body("Clock")).await;
    let user = app
        .state
        .store
        .user_by_username("alice")
        .await
        .unwrap()
        .unwrap();
    let servers = app
        .state
        .store
        .active_mcp_servers_with_keys(user.id)
        .await
        .unwrap();
    assert_eq!(servers.len(), 1);
    let shown = format!("{servers:?}");
    assert!(!shown.contains(API_KEY), "{shown}");
    assert!(shown.contains("Clock"), "{shown}");
}
