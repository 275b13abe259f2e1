//! What the operator reads when a user's MCP server fails: the service's own warning naming
//! the server, not an error from inside the MCP library, and never the server's API key.

use serde_json::{json, Value};

use crate::fake_mcp::FakeMcp;
use crate::helpers::{now, sign};
use crate::service_process::ServiceProcess;

#[tokio::test]
async fn a_server_that_answers_404_is_a_warning_naming_it() {
    // The fake serves `/mcp`; every other path answers 404.
    let missing = FakeMcp::start_plain_json().await;
    let folder = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", folder.path().join("chat.db").display());
    let authority = missing.authority();
    let service = ServiceProcess::start(&[
        ("DATABASE_URL", &database),
        ("MCP_ALLOWED_HOSTS", &authority),
    ])
    .await;
    let client = reqwest::Client::new();
    let token = sign(&json!({"sub": "olga", "roles": ["user"], "exp": now() + 600}));
    let post = |path: &str, body: Value| {
        client
            .post(format!("{}/api/v1{path}", service.address))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let server = json!({
        "name": "gone-server",
        "server_url": format!("http://{authority}/gone"),
        "api_key": "sk-must-not-be-logged",
    });
    assert_eq!(post("/mcp-servers/", server).await.unwrap().status(), 201);
    let conversation: Value = post("/users/me/conversations", json!({"title": "404"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chat = format!(
        "/conversations/{}/chat",
        conversation["id"].as_str().unwrap()
    );

    // Each turn lists the server's tools again (a failed list is not kept): the second warning
    // comes after everything the first turn logged.
    for _ in 0..2 {
        let reply = post(&chat, json!({"content": "hello"})).await.unwrap();
        assert_eq!(reply.status(), 200);
    }
    let is_warning = |entry: &Value| {
        entry["level"] == "WARN" && entry["server"] == "gone-server" && entry["server_id"].is_i64()
    };
    let log = service
        .wait_for_log("a warning naming the server for each turn", |entries| {
            entries.iter().filter(|entry| is_warning(entry)).count() >= 2
        })
        .await;
    let errors: Vec<&Value> = log
        .iter()
        .filter(|entry| entry["level"] == "ERROR")
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains("sk-must-not-be-logged"));
}
