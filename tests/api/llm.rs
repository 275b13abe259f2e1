//! The OpenAI provider against the fake OpenAI-compatible server, and the offline provider.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use crate::fake_llm::{Behaviour, FakeLlm, FAKE_API_KEY, FAKE_MODEL, RAW_ERROR_MARKER};
use crate::helpers::{
    build_provider, collect, ChatRole, ChatTurn, CompletionRequest, LlmError, LlmEvent,
    LlmProvider, LlmSettings, OpenAiProvider, Settings, ToolCall, ToolSpec, Usage,
};

fn request(question: &str) -> CompletionRequest {
    CompletionRequest {
        model: FAKE_MODEL.to_owned(),
        messages: vec![
            ChatTurn::new(ChatRole::System, "You are terse."),
            ChatTurn::new(ChatRole::User, "Hi"),
            ChatTurn::new(ChatRole::Assistant, "Hello."),
            ChatTurn::new(ChatRole::User, question),
        ],
        ..CompletionRequest::default()
    }
}

fn provider(settings: &LlmSettings) -> OpenAiProvider {
    OpenAiProvider::new(settings).expect("provider from valid settings")
}

/// Every item of a reply, errors included.
async fn events(provider: &OpenAiProvider, question: &str) -> Vec<Result<LlmEvent, LlmError>> {
    provider
        .stream(&request(question))
        .await
        .expect("the reply starts")
        .collect()
        .await
}

fn deltas(events: &[Result<LlmEvent, LlmError>]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Ok(LlmEvent::Delta(d)) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

/// An error message must be safe to show to the user.
fn assert_safe(error: &LlmError, fake: &FakeLlm) {
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains(FAKE_API_KEY), "{shown}");
        assert!(!shown.contains(RAW_ERROR_MARKER), "{shown}");
        assert!(!shown.contains(&fake.base_url), "{shown}");
    }
}

#[tokio::test]
async fn streams_deltas_in_order_then_usage() {
    let fake = FakeLlm::start().await;
    fake.script(Behaviour::reply("The quick brown fox jumps"));
    let provider = provider(&fake.llm_settings());

    let events = events(&provider, "Tell me about foxes").await;

    assert_eq!(
        deltas(&events),
        ["The ", "quick ", "brown ", "fox ", "jumps"]
    );
    // Usage comes last; the fake counts prompt words and one token per chunk.
    let prompt_words = "You are terse. Hi Hello. Tell me about foxes"
        .split_whitespace()
        .count() as u32;
    assert_eq!(
        events.last(),
        Some(&Ok(LlmEvent::Usage(Usage {
            prompt_tokens: prompt_words,
            completion_tokens: 5,
            total_tokens: prompt_words + 5,
            estimated: false,
        })))
    );
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn a_server_that_reports_no_usage_gets_an_estimate_marked_as_one() {
    let fake = FakeLlm::start().await;
    fake.without_usage();
    fake.script(Behaviour::reply("The quick brown fox jumps"));
    let provider = provider(&fake.llm_settings());

    let events = events(&provider, "Tell me about foxes").await;

    assert_eq!(deltas(&events).concat(), "The quick brown fox jumps");
    // Four characters a token: the 25 characters of the reply are 7.
    match events.last() {
        Some(Ok(LlmEvent::Usage(usage))) => {
            assert!(usage.estimated, "{usage:?}");
            assert_eq!(usage.completion_tokens, 7);
            assert!(usage.prompt_tokens > 0);
            assert_eq!(
                usage.total_tokens,
                usage.prompt_tokens + usage.completion_tokens
            );
        }
        other => panic!("the stream did not end with a usage: {other:?}"),
    }
}

#[tokio::test]
async fn complete_collects_text_and_usage() {
    let fake = FakeLlm::start().await;
    fake.script(Behaviour::reply_slowly(
        "A collected reply",
        Duration::from_millis(5),
    ));
    let completion = provider(&fake.llm_settings())
        .complete(&request("Q"))
        .await
        .unwrap();
    assert_eq!(completion.text, "A collected reply");
    assert_eq!(completion.usage.map(|u| u.completion_tokens), Some(3));
}

#[tokio::test]
async fn sends_the_bearer_key_model_and_settings() {
    let fake = FakeLlm::start().await;
    let provider = provider(&fake.llm_settings());
    let _ = events(&provider, "What is up?").await;

    let sent = fake.last_request().expect("one request");
    assert_eq!(
        sent.authorization.as_deref(),
        Some(format!("Bearer {FAKE_API_KEY}").as_str())
    );
    let body = sent.body;
    assert_eq!(body["model"], FAKE_MODEL);
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "What is up?"},
        ])
    );
}

#[tokio::test]
async fn no_key_sends_no_authorization() {
    let fake = FakeLlm::start().await;
    let settings = LlmSettings {
        api_key: None,
        ..fake.llm_settings()
    };
    let _ = events(&provider(&settings), "Q").await;
    assert_eq!(fake.last_request().unwrap().authorization, None);
}

#[tokio::test]
async fn retries_after_429_then_succeeds() {
    let fake = FakeLlm::start().await;
    fake.script_times(2, Behaviour::rate_limited(0));
    fake.script(Behaviour::reply("Finally"));
    let provider = provider(&fake.llm_settings()); // max_retries = 2

    let events = events(&provider, "Q").await;

    assert_eq!(deltas(&events).concat(), "Finally");
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn honours_retry_after() {
    let fake = FakeLlm::start().await;
    fake.script(Behaviour::rate_limited(1));
    fake.script(Behaviour::reply("Waited"));
    // The computed backoff would be about a millisecond; only the header explains a wait.
    let provider = provider(&fake.llm_settings());

    let started = Instant::now();
    let events = events(&provider, "Q").await;

    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(deltas(&events).concat(), "Waited");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn retries_after_500_then_succeeds() {
    let fake = FakeLlm::start().await;
    fake.script(Behaviour::server_error());
    fake.script(Behaviour::status(503));
    let provider = provider(&fake.llm_settings());

    let events = events(&provider, "Q").await;

    assert_eq!(deltas(&events).concat(), "Hello from the fake LLM");
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn permanent_failure_gives_a_clean_error_after_the_retries() {
    let fake = FakeLlm::start().await;
    fake.set_fallback(Behaviour::server_error());
    let settings = LlmSettings {
        max_retries: 3,
        ..fake.llm_settings()
    };

    let error = provider(&settings)
        .stream(&request("Q"))
        .await
        .err()
        .unwrap();

    assert_eq!(error, LlmError::Unavailable);
    assert_eq!(fake.request_count(), 4);
    assert_safe(&error, &fake);
}

#[tokio::test]
async fn rate_limited_to_the_end_says_so() {
    let fake = FakeLlm::start().await;
    fake.set_fallback(Behaviour::rate_limited(0));

    let error = provider(&fake.llm_settings())
        .stream(&request("Q"))
        .await
        .err()
        .unwrap();

    assert_eq!(error, LlmError::RateLimited);
    assert_eq!(fake.request_count(), 3);
    assert_safe(&error, &fake);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let cases = [
        (Behaviour::status(400), LlmError::Rejected(400)),
        (Behaviour::status(404), LlmError::Rejected(404)),
        (Behaviour::status(401), LlmError::Unauthorized),
        (
            Behaviour::error(429, "insufficient_quota"),
            LlmError::QuotaExceeded,
        ),
        (
            Behaviour::error(400, "context_length_exceeded"),
            LlmError::ContextTooLong,
        ),
    ];
    for (behaviour, expected) in cases {
        let fake = FakeLlm::start().await;
        fake.set_fallback(behaviour);
        let error = provider(&fake.llm_settings())
            .stream(&request("Q"))
            .await
            .err()
            .unwrap();
        assert_eq!(error, expected);
        assert_eq!(fake.request_count(), 1, "{expected:?} must not be retried");
        assert_safe(&error, &fake);
    }
}

#[tokio::test]
async fn a_stream_that_breaks_mid_way_ends_with_an_error_item() {
    let fake = FakeLlm::start().await;
    fake.script(Behaviour::drop_after("alpha beta gamma delta", 2));
    let provider = provider(&fake.llm_settings());

    let events = events(&provider, "Q").await;

    assert_eq!(deltas(&events), ["alpha ", "beta "]);
    assert_eq!(events.last(), Some(&Err(LlmError::Interrupted)));
    // Text was already handed out: retrying would duplicate it.
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn a_stream_that_breaks_before_any_text_is_retried() {
    let fake = FakeLlm::start().await;
    fake.script(Behaviour::drop_after("never seen", 0));
    fake.script(Behaviour::reply("Second try"));
    let provider = provider(&fake.llm_settings());

    let events = events(&provider, "Q").await;

    assert_eq!(deltas(&events).concat(), "Second try");
    assert!(events.iter().all(Result::is_ok));
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_without_retrying() {
    let fake = FakeLlm::start().await;
    fake.set_fallback(Behaviour::hang());
    let settings = LlmSettings {
        timeout: Duration::from_millis(300),
        ..fake.llm_settings()
    };

    let error = provider(&settings)
        .stream(&request("Q"))
        .await
        .err()
        .unwrap();

    assert_eq!(error, LlmError::Timeout);
    assert_eq!(fake.request_count(), 1);
    assert_safe(&error, &fake);
}

#[tokio::test]
async fn the_timeout_bounds_the_first_token_not_a_longer_reply() {
    let fake = FakeLlm::start().await;
    let text = "one two three four five six seven eight nine ten";
    fake.script(Behaviour::reply_slowly(text, Duration::from_millis(200)));
    let settings = LlmSettings {
        timeout: Duration::from_millis(1000),
        ..fake.llm_settings()
    };

    // Two seconds of reply, twice the timeout: it is not cut.
    let events = events(&provider(&settings), "Q").await;
    assert_eq!(deltas(&events).concat(), text);
    assert!(events.iter().all(Result::is_ok), "{events:?}");
}

#[tokio::test]
async fn a_first_token_later_than_the_timeout_is_a_timeout() {
    let fake = FakeLlm::start().await;
    fake.script(Behaviour::reply_slowly("late", Duration::from_millis(1500)));
    let settings = LlmSettings {
        timeout: Duration::from_millis(300),
        max_retries: 0,
        ..fake.llm_settings()
    };
    let error = provider(&settings).stream(&request("Q")).await.err();
    assert_eq!(error, Some(LlmError::Timeout));
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // A port that was just free: connecting to it is refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let fake = FakeLlm::start().await;
    let settings = LlmSettings {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        ..fake.llm_settings()
    };

    let error = provider(&settings)
        .stream(&request("Q"))
        .await
        .err()
        .unwrap();

    assert_eq!(error, LlmError::Unavailable);
    assert!(!error.to_string().contains(&port.to_string()));
}

#[tokio::test]
async fn build_provider_follows_the_settings() {
    let fake = FakeLlm::start().await;
    let openai = build_provider(&fake.llm_settings()).unwrap();
    assert_eq!(openai.name(), "openai");
    assert_eq!(
        openai.complete(&request("Q")).await.unwrap().text,
        "Hello from the fake LLM"
    );
}

#[tokio::test]
async fn echo_provider_works_offline() {
    // No environment at all: no key, so the echo provider is chosen.
    let settings = Settings::from_lookup(|_| None).unwrap().llm;
    let echo = build_provider(&settings).unwrap();
    assert_eq!(echo.name(), "echo");

    let completion = echo.complete(&request("Are you there?")).await.unwrap();

    assert_eq!(completion.text, "Echo: Are you there?");
    let usage = completion.usage.expect("echo estimates usage");
    assert!(usage.prompt_tokens > 0);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
}

#[tokio::test]
async fn the_fake_answers_plain_json_when_not_streaming() {
    let fake = FakeLlm::start().await;
    fake.script(Behaviour::reply("Plain answer"));

    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", fake.base_url))
        .json(&json!({
            "model": FAKE_MODEL,
            "messages": [{"role": "user", "content": "two words"}],
        }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    // The body must be what async-openai expects of a real server.
    let body: async_openai::types::CreateChatCompletionResponse = response.json().await.unwrap();

    assert_eq!(
        body.choices[0].message.content.as_deref(),
        Some("Plain answer")
    );
    assert_eq!(
        body.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((2, 2))
    );
}

#[tokio::test]
async fn tools_are_offered_and_streamed_tool_calls_are_assembled() {
    let fake = FakeLlm::start().await;
    fake.script(Behaviour::tool_call(
        "get_current_time",
        serde_json::json!({"timezone": "Asia/Tokyo"}),
    ));
    let mut ask = request("What time is it in Tokyo?");
    ask.tools = vec![ToolSpec {
        name: "get_current_time".into(),
        description: Some("The time in a timezone".into()),
        parameters: serde_json::json!({"type": "object",
            "properties": {"timezone": {"type": "string"}}}),
    }];
    let completion = collect(provider(&fake.llm_settings()).stream(&ask).await.unwrap())
        .await
        .unwrap();
    assert_eq!(completion.text, "");
    assert_eq!(completion.tool_calls.len(), 1);
    let call = &completion.tool_calls[0];
    assert_eq!(call.name, "get_current_time");
    assert_eq!(call.id, "call_0");
    let arguments: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
    assert_eq!(arguments["timezone"], "Asia/Tokyo");
    let sent = fake.last_request().unwrap().body;
    assert_eq!(sent["tools"][0]["function"]["name"], "get_current_time");
    assert_eq!(sent["tools"][0]["type"], "function");
}

#[tokio::test]
async fn tool_calls_and_results_go_back_to_the_model_in_its_wire_format() {
    let fake = FakeLlm::start().await;
    let mut ask = request("Q");
    ask.messages.push(ChatTurn::tool_request(
        "",
        vec![ToolCall {
            id: "call_7".into(),
            name: "lookup".into(),
            arguments: "{\"q\":1}".into(),
        }],
    ));
    ask.messages.push(ChatTurn::tool_result("call_7", "42"));
    collect(provider(&fake.llm_settings()).stream(&ask).await.unwrap())
        .await
        .unwrap();
    let sent = fake.last_request().unwrap().body;
    let messages = sent["messages"].as_array().unwrap();
    let request_turn = &messages[messages.len() - 2];
    assert_eq!(request_turn["role"], "assistant");
    assert_eq!(request_turn["tool_calls"][0]["id"], "call_7");
    assert_eq!(
        request_turn["tool_calls"][0]["function"]["arguments"],
        "{\"q\":1}"
    );
    let result_turn = messages.last().unwrap();
    assert_eq!(result_turn["role"], "tool");
    assert_eq!(result_turn["tool_call_id"], "call_7");
    assert_eq!(result_turn["content"], "42");
}
