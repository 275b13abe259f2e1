//! An MCP server that floods its answer (a huge JSON body, one huge SSE event, SSE events that
//! never end) to `initialize`, `tools/list` or a tool call: the answer is read up to
//! `MCP_MAX_RESPONSE_BYTES`, what the model is told, and the service's peak memory as a
//! process.

use std::slice;

use chat_service::mcp::{McpSettings, McpTools};
use serde_json::{json, Value};

use crate::fake_llm::Behaviour;
use crate::fake_mcp::{FakeMcp, Flood};
use crate::mcp_client::{allowing, endpoint, named};
use crate::service_process::ChatProcess;

/// Bytes a flood offers: far more than a service may hold.
const HUGE: usize = 256 * 1024 * 1024;

/// The bound of the in-process tests, in bytes.
const SMALL: usize = 64 * 1024;

/// What the model is told of a call whose answer passed [`SMALL`].
const TOO_LARGE: &str = "the server's answer was larger than 65536 bytes";

/// The bound the service processes are started with, in bytes (1 MiB, a quarter of the
/// default): far enough from the 16 MiB of rmcp's own limits to tell them apart in the
/// figures.
const PROCESS_BOUND: &str = "1048576";

/// What the model is told of a call whose answer passed [`PROCESS_BOUND`].
const TOO_LARGE_IN_PROCESS: &str =
    "The tool flood failed: the server's answer was larger than 1048576 bytes";

/// The bound on the growth of the service's peak memory under a flood, with
/// [`PROCESS_BOUND`]: 8 to 23 MiB measured, 38 to 61 MiB under rmcp's own limits alone
/// (BENCHMARKS.md).
const MAX_GROWTH_KIB: u64 = 32 * 1024;

/// The MCP client reaching `server`, with answers bounded to [`SMALL`].
fn bounded(server: &FakeMcp) -> McpTools {
    McpTools::new(McpSettings {
        max_response_bytes: SMALL,
        ..allowing(&[server])
    })
}

#[tokio::test]
async fn an_answer_within_the_bound_is_read_and_one_past_it_fails_the_call() {
    // rmcp's own server: sessions, answers as SSE events.
    let server = FakeMcp::start_rmcp().await;
    let mcp = bounded(&server);
    let clock = endpoint(1, "clock", &server);
    let tools = mcp.list(slice::from_ref(&clock), None).await;
    let repeat = named(&tools, "repeat");

    let within = mcp
        .call(repeat, &clock, json!({"text": "x", "times": 60_000}), None)
        .await;
    assert!(within.is_ok(), "{within:?}");
    let past = mcp
        .call(repeat, &clock, json!({"text": "x", "times": 70_000}), None)
        .await;
    assert_eq!(past, Err(format!("The tool repeat failed: {TOO_LARGE}")));
    // The session is still closed.
    server
        .wait_for(|requests| {
            requests
                .iter()
                .filter(|request| request.http_method == axum::http::Method::DELETE)
                .count()
                == 3
        })
        .await;
}

#[tokio::test]
async fn every_kind_of_flood_fails_the_call_as_too_large() {
    for flood in [Flood::Json(HUGE), Flood::Event(HUGE), Flood::Events] {
        let server = FakeMcp::start_flooding("tools/call", flood).await;
        let mcp = bounded(&server);
        let flooder = endpoint(1, "flooder", &server);
        let tools = mcp.list(slice::from_ref(&flooder), None).await;

        let answer = mcp
            .call(named(&tools, "flood"), &flooder, json!({}), None)
            .await;
        assert_eq!(
            answer,
            Err(format!("The tool flood failed: {TOO_LARGE}")),
            "{flood:?}"
        );
    }
}

#[tokio::test]
async fn a_server_that_floods_its_handshake_or_its_tool_list_is_skipped() {
    for method in ["initialize", "tools/list"] {
        for flood in [Flood::Json(HUGE), Flood::Event(HUGE), Flood::Events] {
            let server = FakeMcp::start_flooding(method, flood).await;
            let mcp = bounded(&server);
            let flooder = endpoint(1, "flooder", &server);

            let tools = mcp.list(slice::from_ref(&flooder), None).await;
            assert!(tools.is_empty(), "{method} {flood:?}: {tools:?}");
            assert_eq!(server.count(method), 1, "{method} {flood:?}");
        }
    }
}

/// The service, warmed up, then with `server` registered as `flooder`: the process and the
/// baseline of its peak memory.
async fn chatting_with(server: &FakeMcp) -> (ChatProcess, u64) {
    let chat = ChatProcess::start_with(&[
        ("MCP_ALLOWED_HOSTS", &server.authority()),
        ("MCP_MAX_RESPONSE_BYTES", PROCESS_BOUND),
    ])
    .await;
    let baseline = chat.warm_up().await;
    let registered = chat
        .post(
            "/mcp-servers/",
            &json!({"name": "flooder", "server_url": server.url()}),
        )
        .await;
    assert_eq!(registered.status(), 201);
    (chat, baseline)
}

/// The tool result the model got back in its second request.
fn tool_result(chat: &ChatProcess) -> String {
    let requests = chat.llm.requests();
    let second = &requests.last().expect("a request").body;
    second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|message| message["role"] == "tool")
        .and_then(|message| message["content"].as_str())
        .expect("the call's result")
        .to_owned()
}

/// Says `content` and waits for the answer (200): the answer and the growth of the peak
/// memory over `baseline`, printed with the CPU time the turn took under `what`.
async fn measured_turn(
    chat: &ChatProcess,
    baseline: u64,
    content: &str,
    what: &str,
) -> (Value, u64) {
    let cpu_before = chat.service.cpu_ticks();
    let response = chat.say(content).await;
    let growth = chat.peak_growth_kib(baseline);
    let cpu_ms = (chat.service.cpu_ticks() - cpu_before) * 10;
    eprintln!("peak memory grew by {growth} KiB, {cpu_ms} ms of CPU, under {what}");
    assert_eq!(response.status(), 200);
    (response.json().await.unwrap(), growth)
}

/// A turn whose model calls `flood` on a server that answers the call with `flood` (`what`,
/// for the figures): the growth of the peak memory, and what the model was told.
async fn flooded_call(flood: Flood, what: &str) -> (u64, String) {
    let server = FakeMcp::start_flooding("tools/call", flood).await;
    let (chat, baseline) = chatting_with(&server).await;
    chat.llm.script(Behaviour::tool_call("flood", json!({})));
    chat.llm.script(Behaviour::reply("The tool failed."));

    let (answer, growth) = measured_turn(&chat, baseline, "flood me", what).await;
    assert_eq!(answer["ai_response"]["content"], "The tool failed.");
    (growth, tool_result(&chat))
}

#[tokio::test]
async fn memory_stays_bounded_under_a_huge_json_tool_result() {
    let (growth, told) = flooded_call(Flood::Json(HUGE), "a 256 MiB JSON tool result").await;
    assert_eq!(told, TOO_LARGE_IN_PROCESS);
    assert!(growth < MAX_GROWTH_KIB, "peak memory grew by {growth} KiB");
}

#[tokio::test]
async fn memory_stays_bounded_under_one_huge_sse_event() {
    let (growth, told) = flooded_call(Flood::Event(HUGE), "a 256 MiB SSE event").await;
    assert_eq!(told, TOO_LARGE_IN_PROCESS);
    assert!(growth < MAX_GROWTH_KIB, "peak memory grew by {growth} KiB");
}

#[tokio::test]
async fn sse_events_that_never_end_fail_the_call_at_the_bound_not_the_timeout() {
    let (growth, told) = flooded_call(Flood::Events, "endless SSE events").await;
    assert_eq!(told, TOO_LARGE_IN_PROCESS);
    assert!(growth < MAX_GROWTH_KIB, "peak memory grew by {growth} KiB");
}

#[tokio::test]
async fn memory_stays_bounded_under_a_huge_tool_list() {
    let server = FakeMcp::start_flooding("tools/list", Flood::Json(HUGE)).await;
    let (chat, baseline) = chatting_with(&server).await;
    chat.llm.script(Behaviour::reply("No tools today."));

    let (answer, growth) =
        measured_turn(&chat, baseline, "what can you do?", "a 256 MiB tool list").await;
    assert_eq!(answer["ai_response"]["content"], "No tools today.");
    let requests = chat.llm.requests();
    let tools = &requests.last().unwrap().body["tools"];
    assert!(tools.as_array().is_none_or(Vec::is_empty), "{tools}");
    assert!(growth < MAX_GROWTH_KIB, "peak memory grew by {growth} KiB");
    // The operator reads why, with the server named.
    chat.service
        .wait_for_log("a warning naming the server and the bound", |entries| {
            entries.iter().any(|entry| {
                entry["level"] == "WARN"
                    && entry["server"] == "flooder"
                    && entry["error"]
                        .as_str()
                        .is_some_and(|error| error.contains("larger than 1048576 bytes"))
            })
        })
        .await;
}
