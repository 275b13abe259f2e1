//! A provider that misbehaves, by fault or on purpose: tool-call arguments that never end, a
//! tool-call index that would size an allocation, too many calls, an event line that never
//! ends. What the user sees, what is stored, and the service's peak memory as a process.

use serde_json::Value;

use crate::fake_llm::Behaviour;
use crate::helpers::*;
use crate::service_process::ChatProcess;
use crate::tools::{converse, of_type};
use crate::ws_client::WsClient;

/// The message of a provider answer that could not be read (`LlmError::BadResponse`).
const UNREADABLE: &str = "could not be read";

/// The bound the issue sets on the growth of the service's peak memory.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

fn chunks(frames: &[Value]) -> String {
    of_type(frames, "ai_response_chunk")
        .iter()
        .map(|f| f["data"]["delta"].as_str().unwrap())
        .collect()
}

/// An app on the fake LLM, and `user` connected over WebSocket with a conversation.
async fn chatting(user: &str) -> (TestApp, String, String, WsClient) {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let token = app.token(user, USER);
    let conversation = app.new_conversation(&token).await;
    let ws = app.connect(&format!("/ws/chat/{user}?token={token}")).await;
    (app, token, conversation, ws)
}

/// Checks that the turn of `frames` failed as unreadable after streaming `said`, and that
/// `said` is stored as the incomplete reply the failure names.
async fn assert_unreadable_after(
    app: &TestApp,
    (token, conversation): (&str, &str),
    frames: &[Value],
    said: &str,
) {
    let answer = frames.last().unwrap();
    assert_eq!(answer["success"], false, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains(UNREADABLE),
        "{answer}"
    );
    assert_eq!(chunks(frames), said);
    let messages = app.messages(token, conversation).await;
    let reply = messages.last().unwrap();
    assert_eq!(reply["id"], answer["data"]["message_id"]);
    assert_eq!(reply["content"], said);
    assert_eq!(reply["message_metadata"]["incomplete"], true);
}

fn endless_arguments(said: &str, total: usize) -> Behaviour {
    Behaviour::EndlessArguments {
        said: said.to_owned(),
        total,
    }
}

fn calls_at(said: &str, indexes: impl IntoIterator<Item = u64>) -> Behaviour {
    Behaviour::ToolCallsAt {
        said: said.to_owned(),
        indexes: indexes.into_iter().collect(),
    }
}

#[tokio::test]
async fn endless_tool_arguments_are_cut_and_the_reply_stored_truncated() {
    let (app, token, conversation, mut ws) = chatting("ada").await;
    let said = "Let me look that up. ";
    app.llm().script(endless_arguments(said, 8 * 1024 * 1024));

    let frames = converse(&mut ws, &conversation, "look it up").await;
    let answer = frames.last().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["ai_response"]["content"], said);
    assert_eq!(answer["data"]["ai_response"]["truncated"], true);
    assert_eq!(chunks(&frames), said);
    // The cut call is not made, and its arguments never go back to the provider.
    assert!(of_type(&frames, "tool_call").is_empty(), "{frames:?}");
    app.llm().abandoned(1).await;
    assert_eq!(app.llm().request_count(), 1);

    let messages = app.messages(&token, &conversation).await;
    let reply = messages.last().unwrap();
    assert_eq!(reply["content"], said);
    assert_eq!(reply["message_metadata"]["truncated"], true);
    assert!(reply["message_metadata"].get("incomplete").is_none());
}

#[tokio::test]
async fn a_huge_tool_call_index_is_one_call_like_any_other() {
    let (app, _, conversation, mut ws) = chatting("bo").await;
    app.llm().script(calls_at("", [u64::from(u32::MAX)]));
    app.llm().script(Behaviour::reply("Done looking."));

    let frames = converse(&mut ws, &conversation, "look it up").await;
    let answer = frames.last().unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["data"]["ai_response"]["content"], "Done looking.");
    let calls = of_type(&frames, "tool_call");
    assert_eq!(calls.len(), 1, "{frames:?}");
    assert_eq!(calls[0]["data"]["name"], "lookup");
    // The model got an answer for the call it asked for, under its own id.
    let second = &app.llm().requests()[1].body;
    let tool = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("the call's result");
    assert_eq!(tool["tool_call_id"], "call_4294967295");
}

#[tokio::test]
async fn more_tool_calls_than_the_bound_fail_the_round() {
    let (app, token, conversation, mut ws) = chatting("cy").await;
    // MCP_MAX_TOOL_CALLS is 16 by default.
    app.llm().script(calls_at("Checking. ", 0..17));

    let frames = converse(&mut ws, &conversation, "check everything").await;
    assert_unreadable_after(&app, (&token, &conversation), &frames, "Checking. ").await;
    assert!(of_type(&frames, "tool_call").is_empty(), "{frames:?}");
    assert_eq!(app.llm().request_count(), 1);

    // As many calls as the bound are made.
    app.llm().script(calls_at("", 0..16));
    app.llm().script(Behaviour::reply("All checked."));
    let frames = converse(&mut ws, &conversation, "check sixteen").await;
    assert_eq!(frames.last().unwrap()["success"], true, "{frames:?}");
    assert_eq!(of_type(&frames, "tool_call").len(), 16);
}

#[tokio::test]
async fn a_line_that_never_ends_fails_the_stream_at_the_event_bound() {
    let (app, token, conversation, mut ws) = chatting("dee").await;
    let endless_line = |said: &str| Behaviour::EndlessLine {
        said: said.to_owned(),
        piece: 256 * 1024,
    };
    app.llm().script(endless_line("Partial "));

    let frames = converse(&mut ws, &conversation, "go on").await;
    assert_unreadable_after(&app, (&token, &conversation), &frames, "Partial ").await;
    app.llm().abandoned(1).await;

    // Before any text, over REST: a provider error at once, not retried.
    app.llm().script(endless_line(""));
    let failed = app.chat(&token, &conversation, "again").await;
    assert_eq!(failed.status, 502, "{}", failed.text);
    assert!(failed.detail().contains(UNREADABLE), "{}", failed.text);
    app.llm().abandoned(2).await;
    assert_eq!(app.llm().request_count(), 2);
}

#[tokio::test]
async fn memory_stays_bounded_under_endless_tool_arguments() {
    let child = ChatProcess::start().await;
    child.llm.forget_requests();
    let baseline = child.warm_up().await;

    child.llm.script(endless_arguments("", 300 * 1024 * 1024));
    let response = child.say("look it all up").await;
    let growth = child.peak_growth_kib(baseline);
    eprintln!("peak memory grew by {growth} KiB under 300 MB of tool-call arguments");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["ai_response"]["message_metadata"]["truncated"], true);
    child.llm.abandoned(1).await;
    assert!(growth < MAX_GROWTH_KIB, "peak memory grew by {growth} KiB");
}

#[tokio::test]
async fn memory_stays_bounded_under_huge_tool_call_indexes() {
    let child = ChatProcess::start().await;
    let baseline = child.warm_up().await;

    for index in [5_000_000, u64::from(u32::MAX)] {
        child.llm.script(calls_at("", [index]));
        child.llm.script(Behaviour::reply("Looked."));
        let response = child.say("look it up").await;
        assert_eq!(response.status(), 200, "index {index}");
        let growth = child.peak_growth_kib(baseline);
        eprintln!("peak memory grew by {growth} KiB after a tool call at index {index}");
        assert!(
            growth < MAX_GROWTH_KIB,
            "index {index}: grew by {growth} KiB"
        );
    }
}

#[tokio::test]
async fn memory_stays_bounded_under_a_line_that_never_ends() {
    let child = ChatProcess::start().await;
    let baseline = child.warm_up().await;
    let cpu_before = child.service.cpu_ticks();

    child.llm.script(Behaviour::EndlessLine {
        said: String::new(),
        piece: 1024 * 1024,
    });
    let response = child.say("go on").await;
    let growth = child.peak_growth_kib(baseline);
    let cpu_ms = (child.service.cpu_ticks() - cpu_before) * 10;
    eprintln!("peak memory grew by {growth} KiB, {cpu_ms} ms of CPU, under a line that never ends");
    assert_eq!(response.status(), 502);
    child.llm.abandoned(1).await;
    assert!(growth < MAX_GROWTH_KIB, "peak memory grew by {growth} KiB");
}
