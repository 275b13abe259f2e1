//! What the operator reads when a user's MCP server fails: the service's own warning naming
//! the server, not an error from inside the MCP library, and never the server's API key.

use serde_json::{json, Value};

use crate::fake_mcp::FakeMcp;
use crate::service_process::ChatProcess;

#[tokio::test]
async fn a_server_that_answers_404_is_a_warning_naming_it() {
    // The fake serves `/mcp`; every other path answers 404.
    let missing = FakeMcp::start_plain_json().await;
    let authority = missing.authority();
    let chat = ChatProcess::start_with(&[("MCP_ALLOWED_HOSTS", &authority)]).await;
    let server = json!({
        "name": "gone-server",
        "server_url": format!("http://{authority}/gone"),
        "api_key": "sk-must-not-be-logged",
    });
    assert_eq!(chat.post("/mcp-servers/", &server).await.status(), 201);

    // Each turn lists the server's tools again (a failed list is not kept): the second warning
    // comes after everything the first turn logged.
    for _ in 0..2 {
        assert_eq!(chat.say("hello").await.status(), 200);
    }
    let is_warning = |entry: &Value| {
        entry["level"] == "WARN" && entry["server"] == "gone-server" && entry["server_id"].is_i64()
    };
    let log = chat
        .service
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
