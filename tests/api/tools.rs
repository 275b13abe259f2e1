//! Tools in a chat turn: the model calls the tools of the user's MCP servers (real MCP
//! servers in the test process), over WebSocket and SSE, with the address and token rules.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_llm::Behaviour;
use crate::fake_mcp::FakeMcp;
use crate::helpers::*;
use crate::ws_client::WsClient;

/// An app whose settings let it reach `mcp` (it listens on 127.0.0.1), plus `change`.
async fn app_for(mcp: &FakeMcp, change: impl FnOnce(&mut Settings) + Send + 'static) -> TestApp {
    let authority = mcp.authority();
    spawn_app_with(TestOptions::new().fake_llm().settings(move |s| {
        s.mcp.allowed_hosts = vec![authority];
        change(s);
    }))
    .await
}

/// A user who has registered one MCP server and started a conversation.
struct Registered {
    token: String,
    server_id: String,
    conversation: String,
}

/// Gives `user` a token, registers `server` (a JSON body) and starts a conversation.
async fn registered(app: &TestApp, user: &str, server: Value) -> Registered {
    let token = app.token(user, USER);
    let created = app.post_json("/api/v1/mcp-servers/", &token, &server).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let server_id = created.json()["id"].as_str().unwrap().to_owned();
    let conversation = app.new_conversation(&token).await;
    Registered {
        token,
        server_id,
        conversation,
    }
}

/// Sends a message and collects every frame up to the `send_message` answer.
pub(crate) async fn converse(ws: &mut WsClient, conversation: &str, content: &str) -> Vec<Value> {
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": content}}))
        .await;
    let mut frames = Vec::new();
    loop {
        let frame = ws.next().await;
        let done = frame["type"] == "send_message";
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

pub(crate) fn of_type<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}

/// The tool messages the model was sent in its last request.
fn tool_messages(app: &TestApp) -> Vec<Value> {
    let body = app.llm().last_request().unwrap().body;
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .cloned()
        .collect()
}

fn time_in_tokyo() -> Behaviour {
    Behaviour::tool_call("get_current_time", json!({"timezone": "Asia/Tokyo"}))
}

#[tokio::test]
async fn the_model_calls_a_tool_over_websocket_and_answers_with_its_result() {
    let mcp = FakeMcp::start_rmcp().await;
    let app = app_for(&mcp, |_| {}).await;
    let Registered {
        token,
        server_id,
        conversation,
    } = registered(
        &app,
        "pia",
        json!({"name": "time", "server_url": mcp.url()}),
    )
    .await;
    app.llm().script(time_in_tokyo());
    app.llm().script(Behaviour::reply("In Tokyo it is noon."));

    let mut ws = app.connect(&format!("/ws/chat/pia?token={token}")).await;
    let frames = converse(&mut ws, &conversation, "What time is it in Tokyo?").await;
    let calls = of_type(&frames, "tool_call");
    assert_eq!(calls.len(), 1, "{frames:?}");
    assert_eq!(calls[0]["data"]["name"], "get_current_time");
    assert_eq!(calls[0]["data"]["arguments"]["timezone"], "Asia/Tokyo");
    assert!(calls[0]["data"]["generation_id"].is_string());
    let results = of_type(&frames, "tool_result");
    assert_eq!(results[0]["data"]["ok"], true);
    let answer = frames.last().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(
        answer["data"]["ai_response"]["content"],
        "In Tokyo it is noon."
    );

    // The model got the tool's result, after its own call.
    let told = tool_messages(&app);
    assert_eq!(told[0]["content"], "It is 12:00 in Asia/Tokyo.");
    let first = &app.llm().requests()[0].body;
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(offered.contains(&"get_current_time"), "{offered:?}");
    assert_eq!(mcp.calls()[0].tool.as_deref(), Some("get_current_time"));

    let messages = app.messages(&token, &conversation).await;
    let reply = messages.last().unwrap();
    assert_eq!(reply["message_metadata"]["mcp_tool_used"], true);
    assert_eq!(
        reply["message_metadata"]["tool_calls"][0]["server_id"],
        server_id.as_str()
    );
    assert_eq!(
        reply["message_metadata"]["tool_calls"][0]["tool"],
        "get_current_time"
    );
    // Both rounds' tokens count: the tool round reports 8.
    assert!(reply["tokens_used"].as_i64().unwrap() > 8, "{reply}");
}

#[tokio::test]
async fn the_sse_route_shows_tool_calls_and_results() {
    let mcp = FakeMcp::start_rmcp().await;
    let app = app_for(&mcp, |_| {}).await;
    let Registered {
        token,
        conversation,
        ..
    } = registered(
        &app,
        "quin",
        json!({"name": "time", "server_url": mcp.url()}),
    )
    .await;
    app.llm().script(time_in_tokyo());
    app.llm().script(Behaviour::reply("Noon."));
    let streamed = app
        .chat_stream(&token, &conversation, "Time in Tokyo?")
        .await;
    let names: Vec<&str> = streamed
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("event:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        names,
        vec!["tool_call", "tool_result", "chunk", "done"],
        "{}",
        streamed.text
    );
}

#[tokio::test]
async fn a_plain_json_server_on_the_older_protocol_works() {
    let mcp = FakeMcp::start_plain_json().await;
    let app = app_for(&mcp, |_| {}).await;
    let Registered {
        token,
        conversation,
        ..
    } = registered(
        &app,
        "rui",
        json!({"name": "platform-time", "server_url": mcp.url()}),
    )
    .await;
    app.llm().script(time_in_tokyo());
    app.llm().script(Behaviour::reply("Half past nine."));
    let mut ws = app.connect(&format!("/ws/chat/rui?token={token}")).await;
    let frames = converse(&mut ws, &conversation, "Time?").await;
    assert_eq!(of_type(&frames, "tool_result")[0]["data"]["ok"], true);
    assert_eq!(
        tool_messages(&app)[0]["content"],
        "It is 09:30 in Asia/Tokyo."
    );
}

#[tokio::test]
async fn failing_and_hanging_tools_do_not_fail_the_turn() {
    let mcp = FakeMcp::start_rmcp().await;
    let app = app_for(&mcp, |s| s.mcp.timeout = Duration::from_millis(500)).await;
    let Registered {
        token,
        conversation,
        ..
    } = registered(
        &app,
        "sal",
        json!({"name": "tools", "server_url": mcp.url()}),
    )
    .await;
    app.llm().script(Behaviour::ToolCalls {
        calls: vec![("fail".into(), "{}".into()), ("slow".into(), "{}".into())],
    });
    app.llm()
        .script(Behaviour::reply("Both tools failed, sorry."));
    let mut ws = app.connect(&format!("/ws/chat/sal?token={token}")).await;
    let frames = converse(&mut ws, &conversation, "Try them").await;
    let results = of_type(&frames, "tool_result");
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(|r| r["data"]["ok"] == false),
        "{results:?}"
    );
    assert_eq!(frames.last().unwrap()["success"], true);
    let told = tool_messages(&app);
    assert_eq!(told.len(), 2);
    assert!(
        told.iter()
            .all(|m| m["content"].as_str().unwrap().contains("failed")),
        "{told:?}"
    );
}

#[tokio::test]
async fn the_user_token_goes_only_to_listed_hosts_and_api_keys_otherwise() {
    // Listed: the user's own token.
    let mcp = FakeMcp::start_rmcp().await;
    let authority = mcp.authority();
    let app = app_for(&mcp, move |s| {
        s.mcp.forward_user_token_hosts = vec![authority]
    })
    .await;
    let Registered {
        token,
        conversation,
        ..
    } = registered(
        &app,
        "tom",
        json!({"name": "t", "server_url": mcp.url(), "api_key": "sk-server"}),
    )
    .await;
    app.llm().script(time_in_tokyo());
    let mut ws = app.connect(&format!("/ws/chat/tom?token={token}")).await;
    converse(&mut ws, &conversation, "time").await;
    let expected = format!("Bearer {token}");
    assert!(mcp
        .requests()
        .iter()
        .all(|r| r.authorization.as_deref() == Some(expected.as_str())));

    // Not listed: the server's own key, never the user's token.
    let mcp = FakeMcp::start_rmcp().await;
    let app = app_for(&mcp, |_| {}).await;
    let Registered {
        token,
        conversation,
        ..
    } = registered(
        &app,
        "uli",
        json!({"name": "t", "server_url": mcp.url(), "api_key": "sk-server"}),
    )
    .await;
    app.llm().script(time_in_tokyo());
    let mut ws = app.connect(&format!("/ws/chat/uli?token={token}")).await;
    converse(&mut ws, &conversation, "time").await;
    let seen: Vec<_> = mcp
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|a| a.as_deref() == Some("Bearer sk-server")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn servers_on_private_addresses_are_refused_unless_allowed() {
    let mcp = FakeMcp::start_rmcp().await;
    // No MCP_ALLOWED_HOSTS: 127.0.0.1 is refused, so no tool is offered.
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let Registered {
        token,
        conversation,
        ..
    } = registered(
        &app,
        "val",
        json!({"name": "local", "server_url": mcp.url()}),
    )
    .await;
    app.llm().script(Behaviour::reply("No tools here."));
    let mut ws = app.connect(&format!("/ws/chat/val?token={token}")).await;
    let frames = converse(&mut ws, &conversation, "time?").await;
    assert!(of_type(&frames, "tool_call").is_empty());
    assert!(app
        .llm()
        .last_request()
        .unwrap()
        .body
        .get("tools")
        .is_none_or(Value::is_null));
    assert!(
        mcp.requests().is_empty(),
        "nothing was sent to the refused server"
    );
}

#[tokio::test]
async fn inactive_servers_and_anonymous_chats_offer_no_tools() {
    let mcp = FakeMcp::start_rmcp().await;
    let app = app_for(&mcp, |_| {}).await;
    let Registered {
        token,
        conversation,
        ..
    } = registered(
        &app,
        "wes",
        json!({"name": "off", "server_url": mcp.url(), "is_active": false}),
    )
    .await;
    let mut ws = app.connect(&format!("/ws/chat/wes?token={token}")).await;
    converse(&mut ws, &conversation, "hi").await;
    let mut anonymous = app.connect("/ws/chat").await;
    let started = anonymous.start().await;
    converse(&mut anonymous, &started, "hi").await;
    assert!(mcp.requests().is_empty());
}
