//! The original service's API that the platform still calls: chat-health fields, stats
//! fields, the system message stored as the first message, conversations without the user
//! in the path, older WebSocket frames and the export under `/chat`.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    assert_safe_error, spawn_app, spawn_app_with, Settings, TestApp, TestOptions, ADMIN, MANAGER,
    USER,
};

const FLAT: &str = "/api/v1/conversations";

fn id(value: &Value) -> String {
    value["id"].as_str().expect("a public ID").to_owned()
}

fn ids(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(id)
        .collect()
}

async fn chat_health(app: &TestApp) -> Value {
    app.get_public("/api/v1/chat/health")
        .await
        .assert_status(200)
        .json()
}

#[tokio::test]
async fn chat_health_answers_the_original_fields() {
    // The offline provider: no OpenAI API.
    let app = spawn_app().await;
    let body = chat_health(&app).await;
    assert_eq!(body["chat_service"], "active");
    assert_eq!(body["openai_api"], "not_configured");
    assert_eq!(body["websocket_connections"], "active");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["llm_provider"], "echo");

    // An OpenAI-compatible server of the operator's own.
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let body = chat_health(&app).await;
    assert_eq!(body["llm_provider"], "openai");
    assert_eq!(body["openai_api"], "configured");
}

/// The OpenAI provider, as the environment `env` (and `LLM_PROVIDER=openai`) sets it up.
fn openai(env: &[(&str, &str)]) -> TestOptions {
    let mut env: HashMap<String, String> = env
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    env.insert("LLM_PROVIDER".to_owned(), "openai".to_owned());
    let llm = Settings::from_map(&env).expect("LLM settings").llm;
    TestOptions::new().settings(move |settings| settings.llm = llm)
}

#[tokio::test]
async fn chat_health_says_whether_openai_can_answer() {
    for (env, expected) in [
        (&[("OPENAI_API_KEY", "sk-test")][..], "configured"),
        (
            &[("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")],
            "configured",
        ),
        (&[], "not_configured"),
    ] {
        let app = spawn_app_with(openai(env)).await;
        let body = chat_health(&app).await;
        assert_eq!(body["llm_provider"], "openai");
        assert_eq!(body["openai_api"], expected, "{env:?}");
    }
}

#[tokio::test]
async fn stats_carry_total_tokens_used() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let cid = app.new_conversation(&alice).await;
    for tokens in [7, 5] {
        let reply = json!({ "role": "assistant", "content": "a", "tokens_used": tokens });
        app.add_message(&alice, &cid, &reply).await;
    }
    let stats = app
        .get(
            &format!("/api/v1/users/me/conversations/{cid}/stats"),
            &alice,
        )
        .await
        .assert_status(200)
        .json();
    assert_eq!(stats["total_tokens"], 12);
    assert_eq!(stats["total_tokens_used"], 12);
}

#[tokio::test]
async fn a_system_message_is_stored_as_the_first_message() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let body = json!({ "title": "Terse", "system_message": "You are terse." });
    let created = app.create_conversation(&alice, &body).await;
    assert_eq!(created["system_message"], "You are terse.");
    let cid = id(&created);
    let messages = app.messages(&alice, &cid).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[0]["content"], "You are terse.");
    assert_eq!(messages[0]["conversation_id"], cid.as_str());
    // Created together: the conversation's activity is its first message.
    assert_eq!(messages[0]["timestamp"], created["updated_at"]);
    assert_eq!(created["created_at"], created["updated_at"]);

    // Later messages come after it.
    app.say(&alice, &cid, "user", "hi").await;
    let messages = app.messages(&alice, &cid).await;
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user"]);
    let stats = app
        .get(
            &format!("/api/v1/users/me/conversations/{cid}/stats"),
            &alice,
        )
        .await
        .json();
    assert_eq!(stats["system_messages"], 1);

    // No system message, or a blank one: no message.
    for body in [json!({}), json!({ "system_message": "   " })] {
        let cid = id(&app.create_conversation(&alice, &body).await);
        assert!(app.messages(&alice, &cid).await.is_empty(), "{body}");
    }
    // A refused creation stores neither.
    let body = json!({ "system_message": "x", "model": "gpt-9" });
    app.post_json("/api/v1/users/me/conversations", &alice, &body)
        .await
        .assert_status(422);
    assert_eq!(app.count("conversations").await, 3);
    assert_eq!(app.count("messages").await, 2);
}

#[tokio::test]
async fn a_system_message_from_a_websocket_start_is_stored_too() {
    let app = spawn_app().await;
    let token = app.token("alice", USER);
    let mut ws = app.connect(&format!("/ws/chat/alice?token={token}")).await;
    ws.send(json!({"type": "start_conversation",
        "data": {"title": "ws", "system_message": "Answer in French."}}))
        .await;
    let answer = ws.next().await;
    assert_eq!(answer["success"], true, "{answer}");
    let cid = answer["data"]["conversation_id"].as_str().unwrap();
    let messages = app.messages(&token, cid).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[0]["content"], "Answer in French.");
}

#[tokio::test]
async fn older_websocket_clients_name_the_type_action_and_read_the_id_on_top() {
    let app = spawn_app().await;
    let token = app.token("alice", USER);
    let mut ws = app.connect(&format!("/ws/chat/alice?token={token}")).await;
    ws.send(json!({"action": "ping"})).await;
    assert_eq!(ws.next().await["type"], "pong");

    ws.send(json!({"action": "start_conversation", "data": {"title": "old client"}}))
        .await;
    let answer = ws.next().await;
    assert_eq!(answer["type"], "start_conversation");
    assert_eq!(answer["success"], true, "{answer}");
    let cid = answer["conversation_id"].as_str().expect("a top-level id");
    assert_eq!(cid.len(), 12);
    assert_eq!(answer["data"]["conversation_id"], cid);
    assert_eq!(answer["data"]["title"], "old client");

    ws.send(json!({"action": "send_message", "data": {"conversation_id": cid, "content": "hi"}}))
        .await;
    let (_, reply) = ws.collect_reply().await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["data"]["user_message"]["content"], "hi");

    // `type` wins over `action`; an unknown action is refused by name.
    ws.send(json!({"type": "ping", "action": "end_conversation"}))
        .await;
    assert_eq!(ws.next().await["type"], "pong");
    ws.send(json!({"action": "dance"})).await;
    let refused = ws.next().await;
    assert_eq!(refused["type"], "dance");
    assert_eq!(refused["success"], false);
}

#[tokio::test]
async fn conversations_are_created_without_the_user_in_the_path() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let bob = app.token("bob", USER);
    let manager = app.token("mona", MANAGER);
    let admin = app.token("root", ADMIN);
    let alice_id = app.my_id(&alice).await;
    app.me(&bob).await;

    let body = json!({ "title": "Flat", "system_message": "Be brief." });
    let created = app.post_json(FLAT, &alice, &body).await;
    let created = created.assert_status(201).json();
    assert_eq!(created["user_id"], alice_id.as_str());
    assert_eq!(created["title"], "Flat");
    let messages = app.messages(&alice, &id(&created)).await;
    assert_eq!(messages[0]["content"], "Be brief.");
    let defaults = app.post_json(FLAT, &alice, &json!({})).await;
    assert_eq!(
        defaults.assert_status(201).json()["title"],
        "New Conversation"
    );

    // `user_id` names the caller (any form), or another user for admins only.
    for owner in ["me", "alice", alice_id.as_str()] {
        let body = json!({ "user_id": owner });
        let response = app.post_json(FLAT, &alice, &body).await;
        assert_eq!(
            response.assert_status(201).json()["user_id"],
            alice_id.as_str()
        );
    }
    let by_admin = app
        .post_json(FLAT, &admin, &json!({ "user_id": "alice" }))
        .await;
    assert_eq!(
        by_admin.assert_status(201).json()["user_id"],
        alice_id.as_str()
    );
    for token in [&bob, &manager] {
        let refused = app
            .post_json(FLAT, token, &json!({ "user_id": "alice" }))
            .await;
        refused.assert_status(403);
        assert_safe_error(&refused);
    }
    let unknown = app
        .post_json(FLAT, &admin, &json!({ "user_id": "nobody" }))
        .await;
    unknown.assert_status(404);
    for (body, field) in [
        (json!({ "title": "" }), "title"),
        (json!({ "title": 5 }), "title"),
        (
            json!({ "system_message": "s".repeat(8001) }),
            "system_message",
        ),
        (json!({ "user_id": 5 }), "user_id"),
    ] {
        let response = app.post_json(FLAT, &alice, &body).await;
        assert_eq!(response.status, 422, "{body}: {}", response.text);
        assert!(response.detail().contains(field), "{}", response.detail());
    }
    app.call(Method::POST, FLAT, None, Some(&json!({})))
        .await
        .assert_status(401);
    // Alice's six, nothing of the refused ones.
    assert_eq!(app.count("conversations").await, 6);
}

#[tokio::test]
async fn conversations_are_listed_without_the_user_in_the_path() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let bob = app.token("bob", USER);
    let manager = app.token("mona", MANAGER);
    let admin = app.token("root", ADMIN);
    let first = app.new_conversation(&alice).await;
    let second = app.new_conversation(&alice).await;
    let bobs = app.new_conversation(&bob).await;

    let mine = app.get(FLAT, &alice).await;
    mine.assert_status(200);
    assert_eq!(ids(&mine.json()), [second.as_str(), first.as_str()]);
    assert_eq!(mine.total(), 2);
    let paged = app.get(&format!("{FLAT}?skip=1&limit=1"), &alice).await;
    assert_eq!(ids(&paged.json()), [first.as_str()]);
    assert_eq!(paged.total(), 2);
    assert_eq!(
        ids(&app.get(&format!("{FLAT}?user_id=me"), &alice).await.json()).len(),
        2
    );
    assert_eq!(ids(&app.get(FLAT, &bob).await.json()), [bobs.as_str()]);
    // Admins and managers list their own unless they name someone.
    assert_eq!(app.get(FLAT, &admin).await.total(), 0);
    for token in [&admin, &manager] {
        let listed = app.get(&format!("{FLAT}?user_id=alice"), token).await;
        assert_eq!(
            ids(&listed.assert_status(200).json()),
            [second.as_str(), first.as_str()]
        );
    }
    let refused = app.get(&format!("{FLAT}?user_id=alice"), &bob).await;
    refused.assert_status(403);
    for query in ["skip=-1", "limit=0", "limit=1001"] {
        let response = app.get(&format!("{FLAT}?{query}"), &alice).await;
        assert_eq!(response.status, 422, "{query}: {}", response.text);
        let name = query.split('=').next().unwrap();
        assert!(response.detail().contains(name), "{}", response.detail());
    }
    app.call(Method::GET, FLAT, None, None)
        .await
        .assert_status(401);
}

#[tokio::test]
async fn one_conversation_without_the_user_in_the_path() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let callers = [
        ("another user", app.token("bob", USER), [404, 404, 404]),
        ("a manager", app.token("mona", MANAGER), [200, 404, 404]),
        ("the owner", alice.clone(), [200, 200, 200]),
        ("an admin", app.token("root", ADMIN), [200, 200, 200]),
    ];
    for (who, token, [read, change, delete]) in &callers {
        let cid = app.new_conversation(&alice).await;
        app.say(&alice, &cid, "user", "hello").await;
        let path = format!("{FLAT}/{cid}");
        let before = app.get(&path, &alice).await.json();

        let got = app.get(&path, token).await;
        assert_eq!(got.status, *read, "GET by {who}: {}", got.text);
        if *read == 200 {
            assert_eq!(got.json(), before);
        }
        let body = json!({ "title": "Renamed", "status": "archived" });
        let put = app.put_json(&path, token, &body).await;
        assert_eq!(put.status, *change, "PUT by {who}: {}", put.text);
        if *change == 200 {
            assert_eq!(put.json()["title"], "Renamed");
            assert_eq!(put.json()["status"], "archived");
        } else {
            assert_safe_error(&put);
            assert_eq!(app.get(&path, &alice).await.json(), before);
        }
        let deleted = app.delete(&path, token).await;
        assert_eq!(deleted.status, *delete, "DELETE by {who}: {}", deleted.text);
        if *delete == 200 {
            assert_eq!(
                deleted.json(),
                json!({ "message": "Conversation deleted successfully", "conversation_id": cid })
            );
            app.get(&path, &alice).await.assert_status(404);
        } else {
            // Still there, with its messages.
            assert_eq!(app.messages(&alice, &cid).await.len(), 1);
        }
    }

    // Validation, unknown IDs and no token.
    let cid = app.new_conversation(&alice).await;
    let path = format!("{FLAT}/{cid}");
    let response = app.put_json(&path, &alice, &json!({ "title": "" })).await;
    response.assert_status(422);
    assert!(response.detail().contains("title"), "{}", response.detail());
    let bad = app
        .put_json(&path, &alice, &json!({ "status": "gone" }))
        .await;
    bad.assert_status(422);
    let unknown = app.state.ids.conversation.encode(9_999);
    for raw in ["nope", unknown.as_str()] {
        app.get(&format!("{FLAT}/{raw}"), &alice)
            .await
            .assert_status(404);
    }
    app.call(Method::GET, &path, None, None)
        .await
        .assert_status(401);
    // The routes below the conversation still answer.
    app.say(&alice, &cid, "user", "still here").await;
    let listed = app.get(&format!("{path}/messages"), &alice).await;
    assert_eq!(listed.assert_status(200).total(), 1);
}

#[tokio::test]
async fn export_answers_under_the_original_chat_path() {
    let app = spawn_app().await;
    let alice = app.token("alice", USER);
    let body = json!({ "title": "Export me", "system_message": "Be kind." });
    let cid = id(&app.create_conversation(&alice, &body).await);
    app.say(&alice, &cid, "user", "Question?").await;
    let path = format!("/api/v1/chat/conversations/{cid}/export");
    let nested = format!("/api/v1/users/me/conversations/{cid}/export");

    let json_export = app.get(&path, &alice).await;
    json_export.assert_status(200);
    assert_eq!(json_export.header("content-type"), Some("application/json"));
    assert_eq!(
        json_export.header("content-disposition"),
        Some(format!("attachment; filename=\"conversation-{cid}.json\"").as_str())
    );
    assert_eq!(json_export.text, app.get(&nested, &alice).await.text);
    let document = json_export.json();
    assert_eq!(document["id"], cid.as_str());
    let roles: Vec<&str> = document["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user"]);

    let markdown = app.get(&format!("{path}?format=markdown"), &alice).await;
    markdown.assert_status(200);
    assert_eq!(
        markdown.header("content-type"),
        Some("text/markdown; charset=utf-8")
    );
    assert!(
        markdown.text.starts_with("# Export me\n"),
        "{}",
        markdown.text
    );
    let pdf = app.get(&format!("{path}?format=pdf"), &alice).await;
    pdf.assert_status(422);
    assert!(pdf.detail().contains("format"), "{}", pdf.detail());

    // Scoped to the caller: others find nothing; managers and admins read.
    let bob = app.token("bob", USER);
    let refused = app.get(&path, &bob).await;
    refused.assert_status(404);
    assert_safe_error(&refused);
    for token in [app.token("mona", MANAGER), app.token("root", ADMIN)] {
        app.get(&path, &token).await.assert_status(200);
    }
    app.call(Method::GET, &path, None, None)
        .await
        .assert_status(401);
    app.get("/api/v1/chat/conversations/nope/export", &alice)
        .await
        .assert_status(404);
}

#[tokio::test]
async fn openapi_documents_the_original_paths() {
    let app = spawn_app().await;
    let document = app.get_public("/openapi.json").await.json();
    for (path, method, statuses) in [
        (
            "/api/v1/conversations",
            "post",
            &["201", "401", "403", "422"][..],
        ),
        (
            "/api/v1/conversations",
            "get",
            &["200", "401", "403", "422"],
        ),
        (
            "/api/v1/conversations/{conversation_id}",
            "get",
            &["200", "401", "404"],
        ),
        (
            "/api/v1/conversations/{conversation_id}",
            "put",
            &["200", "401", "404", "422"],
        ),
        (
            "/api/v1/conversations/{conversation_id}",
            "delete",
            &["200", "401", "404"],
        ),
        (
            "/api/v1/chat/conversations/{conversation_id}/export",
            "get",
            &["200", "401", "404", "422"],
        ),
    ] {
        let operation = &document["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} missing");
        assert!(
            operation["security"][0]["bearer"].is_array(),
            "{method} {path}"
        );
        for status in statuses {
            assert!(
                operation["responses"][status].is_object(),
                "{method} {path} does not declare {status}"
            );
        }
    }
    // The aggregates are flattened in: the added field is in the schema's own part.
    let stats = &document["components"]["schemas"]["ConversationStatsOut"];
    let own = stats["allOf"].as_array().and_then(|parts| parts.last());
    let own = own.unwrap_or(stats);
    assert!(
        own["properties"]["total_tokens_used"].is_object(),
        "{stats}"
    );
    let health = &document["components"]["schemas"]["ChatHealth"]["properties"];
    for field in ["chat_service", "openai_api", "websocket_connections"] {
        assert!(health[field].is_object(), "{field}");
    }
}
