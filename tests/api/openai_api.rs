//! The OpenAI-compatible API, driven by `async-openai` (a real OpenAI client) against the
//! service with the fake LLM behind it: models, completions whole and streamed, tools passed
//! through, every call kept as a conversation, and OpenAI's errors.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::{CreateChatCompletionRequest, FinishReason};
use async_openai::Client;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::api_keys::new_key;
use crate::fake_llm::{Behaviour, FAKE_MODEL};
use crate::helpers::{eventually, spawn_app, spawn_app_with, TestApp, TestOptions, PATIENCE, USER};

const COMPLETIONS: &str = "/v1/chat/completions";

fn client(app: &TestApp, key: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", app.address))
            .with_api_key(key),
    )
}

fn request(body: Value) -> CreateChatCompletionRequest {
    serde_json::from_value(body).expect("a chat completion request")
}

/// An app with the fake LLM and a user's API key.
async fn app_and_key(user: &str) -> (TestApp, String, String) {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let jwt = app.token(user, USER);
    let key = new_key(&app, &jwt).await;
    (app, jwt, key)
}

/// Posts a raw body to `/v1/chat/completions`.
async fn post(app: &TestApp, key: &str, body: &Value) -> crate::helpers::TestResponse {
    app.call(Method::POST, COMPLETIONS, Some(key), Some(body))
        .await
}

/// The `error` object of an OpenAI error answer, checked for its shape.
#[track_caller]
fn openai_error(response: &crate::helpers::TestResponse, status: u16) -> Value {
    response.assert_status(status);
    let body = response.json();
    let error = body["error"].clone();
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("code").is_some() && error.get("param").is_some(),
        "{body}"
    );
    assert!(body.get("detail").is_none(), "{body}");
    error
}

#[tokio::test]
async fn models_lists_the_offered_models() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.llm.allowed_models.push("other-model".to_owned())),
    )
    .await;
    let key = new_key(&app, &app.token("ada", USER)).await;
    let models = client(&app, &key).models().list().await.expect("models");
    assert_eq!(models.object, "list");
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [FAKE_MODEL, "other-model"]);
    let one = client(&app, &key).models().retrieve("other-model").await;
    assert_eq!(one.expect("a listed model").id, "other-model");
    match client(&app, &key).models().retrieve("gpt-unknown").await {
        Err(OpenAIError::ApiError(e)) => assert_eq!(e.code.as_deref(), Some("model_not_found")),
        other => panic!("expected model_not_found, got {other:?}"),
    }
    // A JWT works too; nothing at all does not.
    app.get("/v1/models", &app.token("ada", USER))
        .await
        .assert_status(200);
    let error = openai_error(&app.get_public("/v1/models").await, 401);
    assert_eq!(error["code"], "invalid_api_key");
}

#[tokio::test]
async fn a_completion_is_answered_and_kept_in_a_new_conversation() {
    let (app, jwt, key) = app_and_key("bob").await;
    app.llm().script(Behaviour::reply("Paris is the capital."));
    let body = json!({
        "model": FAKE_MODEL,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of   France?\nPlease."},
            {"role": "assistant", "content": "Which France?"},
            {"role": "user", "content": [{"type": "text", "text": "The country."}]},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 77,
        "stop": ["END"],
        "user": "end-user-7",
    });
    let answer = client(&app, &key)
        .chat()
        .create(request(body.clone()))
        .await
        .expect("a completion");
    assert_eq!(answer.object, "chat.completion");
    assert_eq!(answer.model, FAKE_MODEL);
    assert_eq!(answer.choices.len(), 1);
    let choice = &answer.choices[0];
    assert_eq!(
        choice.message.content.as_deref(),
        Some("Paris is the capital.")
    );
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    let usage = answer.usage.expect("usage");
    assert!(usage.prompt_tokens > 0);
    assert_eq!(usage.completion_tokens, 4);
    assert_eq!(usage.total_tokens, usage.prompt_tokens + 4);

    // The provider got the client's messages and settings, and no stored history.
    let sent = app.llm().last_request().expect("the LLM was asked").body;
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(sent["messages"][3]["content"], "The country.");
    assert_eq!(sent["model"], FAKE_MODEL);
    assert!((sent["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    assert!((sent["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    assert_eq!(sent["max_tokens"], 77);
    assert_eq!(sent["stop"], "END");
    assert_eq!(sent["user"], "end-user-7");
    assert!(sent.get("tools").is_none_or(Value::is_null), "{sent}");

    // Kept: a new conversation titled from the first user message, with the request's system
    // message, the last user message and the reply; the header names it.
    let response = post(&app, &key, &body).await;
    response.assert_status(200);
    let conversation = response.header("x-conversation-id").expect("the header");
    let kept = app
        .get(
            &format!("/api/v1/users/me/conversations/{conversation}"),
            &jwt,
        )
        .await
        .assert_status(200)
        .json();
    assert_eq!(kept["title"], "Capital of France? Please.");
    let messages = app.messages(&jwt, conversation).await;
    let stored: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stored,
        [
            ("system", "Answer briefly."),
            ("user", "The country."),
            ("assistant", "Hello from the fake LLM"),
        ]
    );
    assert_eq!(messages[2]["model"], FAKE_MODEL);
    // Two calls, two conversations.
    assert_eq!(app.conversations().await.len(), 2);
}

#[tokio::test]
async fn a_streamed_completion_sends_chunks_then_usage_then_done() {
    let (app, jwt, key) = app_and_key("cai").await;
    app.llm().script(Behaviour::reply("one two three"));
    let body = json!({
        "model": FAKE_MODEL,
        "messages": [{"role": "user", "content": "count"}],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let response = post(&app, &key, &body).await;
    response.assert_status(200);
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let conversation = response.header("x-conversation-id").unwrap().to_owned();
    let data: Vec<&str> = response
        .text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{}", response.text);
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert_eq!(chunk["model"], FAKE_MODEL);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "one two three");
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 3);
    let finish = rest.last().unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(rest[..rest.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null() && c["usage"].is_null()));
    let messages = app.messages(&jwt, &conversation).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["content"], "one two three");

    // The same through the client library.
    app.llm().script(Behaviour::reply("streamed by the client"));
    let mut stream = client(&app, &key)
        .chat()
        .create_stream(request(body))
        .await
        .expect("a stream");
    let (mut text, mut usage, mut finish) = (String::new(), None, None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a chunk");
        if let Some(choice) = chunk.choices.first() {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
            finish = finish.or(choice.finish_reason);
        }
        usage = usage.or(chunk.usage);
    }
    assert_eq!(text, "streamed by the client");
    assert_eq!(finish, Some(FinishReason::Stop));
    assert_eq!(usage.expect("the usage chunk").completion_tokens, 4);
}

#[tokio::test]
async fn the_clients_tools_are_passed_through_and_their_calls_come_back() {
    let (app, jwt, key) = app_and_key("dan").await;
    let tools = json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }]);
    let body = json!({
        "model": FAKE_MODEL,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": tools,
        "tool_choice": "auto",
    });
    app.llm()
        .script(Behaviour::tool_call("get_weather", json!({"city": "Oslo"})));
    let answer = client(&app, &key)
        .chat()
        .create(request(body.clone()))
        .await
        .expect("a completion");
    let sent = app.llm().last_request().unwrap().body;
    assert_eq!(sent["tools"], tools);
    assert_eq!(sent["tool_choice"], "auto");
    let choice = &answer.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    let calls = choice.message.tool_calls.clone().expect("tool calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].id, "call_0");
    assert_eq!(calls[0].function.name, "get_weather");
    let arguments: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
    assert_eq!(arguments, json!({"city": "Oslo"}));
    // One request: the service called no tool itself.
    assert_eq!(app.llm().request_count(), 1);

    // Streamed, the calls come as indexed chunks; kept in the reply's metadata.
    app.llm().script(Behaviour::tool_call(
        "get_weather",
        json!({"city": "Bergen"}),
    ));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let response = post(&app, &key, &streamed).await;
    response.assert_status(200);
    let chunks: Vec<Value> = response
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let call = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
        .expect("a tool call chunk");
    assert_eq!(call["index"], 0);
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    let conversation = response.header("x-conversation-id").unwrap();
    let messages = app.messages(&jwt, conversation).await;
    let kept = &messages[1]["message_metadata"]["tool_calls"][0];
    assert_eq!(kept["function"]["name"], "get_weather");
    assert_eq!(kept["type"], "function");

    // The client's next call carries the result; it goes to the provider as given.
    app.llm().script(Behaviour::reply("Sunny."));
    let follow_up = json!({
        "model": FAKE_MODEL,
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0",
                "type": "function", "function": {"name": "get_weather",
                "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "sunny, 21 C"},
        ],
        "tools": tools,
    });
    let answer = client(&app, &key)
        .chat()
        .create(request(follow_up))
        .await
        .expect("a completion");
    assert_eq!(answer.choices[0].message.content.as_deref(), Some("Sunny."));
    let sent = app.llm().last_request().unwrap().body;
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], "call_0");
    assert_eq!(sent["messages"][2]["role"], "tool");
    assert_eq!(sent["messages"][2]["tool_call_id"], "call_0");
    assert_eq!(sent["messages"][2]["content"], "sunny, 21 C");
}

#[tokio::test]
async fn a_named_conversation_keeps_the_call_and_others_are_not_found() {
    let (app, jwt, key) = app_and_key("eve").await;
    let conversation = app.new_conversation(&jwt).await;
    app.say(&jwt, &conversation, "user", "stored earlier").await;
    let body = |id: &str| {
        json!({
            "model": FAKE_MODEL,
            "messages": [{"role": "user", "content": "into the named one"}],
            "metadata": {"conversation_id": id},
        })
    };
    let response = post(&app, &key, &body(&conversation)).await;
    response.assert_status(200);
    assert_eq!(
        response.header("x-conversation-id"),
        Some(conversation.as_str())
    );
    let messages = app.messages(&jwt, &conversation).await;
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1]["content"], "into the named one");
    // The stored history was not sent.
    let sent = app.llm().last_request().unwrap().body;
    assert_eq!(sent["messages"].as_array().unwrap().len(), 1);

    let stranger = app.token("fay", USER);
    let strangers = app.new_conversation(&stranger).await;
    let before = app.snapshot().await;
    for id in [strangers.as_str(), "nope", "000000000000"] {
        let error = openai_error(&post(&app, &key, &body(id)).await, 404);
        assert_eq!(error["type"], "invalid_request_error");
    }
    assert_eq!(app.snapshot().await, before, "nothing was stored");
    let error = openai_error(
        &post(
            &app,
            &key,
            &json!({"model": FAKE_MODEL, "messages": [{"role": "user", "content": "x"}],
                "metadata": {"conversation_id": 7}}),
        )
        .await,
        400,
    );
    assert_eq!(error["param"], "metadata");
}

#[tokio::test]
async fn bad_requests_answer_in_openai_error_format() {
    let (app, _jwt, key) = app_and_key("gus").await;
    let before = app.snapshot().await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"model": FAKE_MODEL, "messages": []}),
            400,
            "messages",
        ),
        (json!({"model": FAKE_MODEL}), 400, ""),
        (
            json!({"model": FAKE_MODEL, "messages": [{"role": "robot", "content": "hi"}]}),
            400,
            "",
        ),
        (
            json!({"model": FAKE_MODEL, "messages": [{"role": "system", "content": "only"}]}),
            400,
            "messages",
        ),
        (
            json!({"model": FAKE_MODEL, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
            400,
            "messages",
        ),
        (
            json!({"model": FAKE_MODEL, "messages": user, "n": 2}),
            400,
            "n",
        ),
        (json!({"model": FAKE_MODEL, "messages": "hi"}), 400, ""),
        (
            json!({"model": FAKE_MODEL, "messages": [{"role": "user", "content": "x".repeat(40_000)}]}),
            400,
            "",
        ),
        (
            json!({"model": "gpt-unknown", "messages": user}),
            404,
            "model",
        ),
    ];
    for (body, status, param) in cases {
        let response = post(&app, &key, &body).await;
        let error = openai_error(&response, status);
        if !param.is_empty() {
            assert_eq!(error["param"], param, "{body}");
        }
        if status == 404 {
            assert_eq!(error["code"], "model_not_found");
        }
    }
    // Bad JSON, and a body over the limit.
    let bad_json = app
        .request(Method::POST, COMPLETIONS)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"model\": ");
    let error = openai_error(&app.send(bad_json).await, 400);
    assert_eq!(error["type"], "invalid_request_error");
    let huge = "x".repeat(app.state.settings.limits.max_body_bytes + 1);
    let oversize = app
        .request(Method::POST, COMPLETIONS)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"model\": \"{FAKE_MODEL}\", \"messages\": [{{\"role\": \"user\", \"content\": \"{huge}\"}}]}}"
        ));
    openai_error(&app.send(oversize).await, 413);
    // No key, a bad key.
    let error = openai_error(
        &app.call(Method::POST, COMPLETIONS, None, Some(&json!({})))
            .await,
        401,
    );
    assert_eq!(error["code"], "invalid_api_key");
    openai_error(&post(&app, "cs-unknown", &json!({})).await, 401);
    assert_eq!(app.snapshot().await, before, "nothing was stored");
    assert_eq!(app.llm().request_count(), 0);
    // The client library reads these errors.
    match client(&app, &key)
        .chat()
        .create(request(json!({"model": "gpt-unknown", "messages": user})))
        .await
    {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.code.as_deref(), Some("model_not_found"));
            assert_eq!(e.r#type.as_deref(), Some("invalid_request_error"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_echo_provider_answers_without_an_llm() {
    let app = spawn_app().await;
    let jwt = app.token("hal", USER);
    let key = new_key(&app, &jwt).await;
    let answer = client(&app, &key)
        .chat()
        .create(request(json!({
            "model": app.state.settings.llm.model,
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "Echo: first"},
                {"role": "user", "content": "second"},
            ],
        })))
        .await
        .expect("a completion");
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some("Echo: second")
    );
}

#[tokio::test]
async fn a_reply_over_the_size_limit_finishes_with_length() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.llm.max_reply_chars = 7),
    )
    .await;
    let jwt = app.token("ida", USER);
    let key = new_key(&app, &jwt).await;
    app.llm()
        .script(Behaviour::reply("a reply far longer than seven"));
    let answer = client(&app, &key)
        .chat()
        .create(request(json!({
            "model": FAKE_MODEL,
            "messages": [{"role": "user", "content": "talk"}],
        })))
        .await
        .expect("a completion");
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some("a reply")
    );
    assert_eq!(answer.choices[0].finish_reason, Some(FinishReason::Length));
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_still_gets_its_reply_stored() {
    let (app, jwt, key) = app_and_key("jon").await;
    let text = "slowly spoken words that keep coming one after another";
    app.llm()
        .script(Behaviour::reply_slowly(text, Duration::from_millis(40)));
    let response = app
        .request(Method::POST, COMPLETIONS)
        .bearer_auth(&key)
        .json(&json!({
            "model": FAKE_MODEL,
            "messages": [{"role": "user", "content": "speak"}],
            "stream": true,
        }))
        .send()
        .await
        .expect("the stream starts");
    assert_eq!(response.status(), 200);
    let conversation = response
        .headers()
        .get("x-conversation-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("bytes");
    assert!(!first.is_empty());
    drop(body);
    eventually("the whole reply is stored", PATIENCE, || async {
        let messages = app.messages(&jwt, &conversation).await;
        messages.len() == 2 && messages[1]["content"] == text
    })
    .await;
    let messages = app.messages(&jwt, &conversation).await;
    assert!(messages[1]["message_metadata"].get("incomplete").is_none());
}

#[tokio::test]
async fn a_reply_cut_by_the_provider_is_stored_incomplete_and_the_stream_says_so() {
    let (app, jwt, key) = app_and_key("kim").await;
    app.llm()
        .script(Behaviour::drop_after("half of a reply then nothing", 3));
    let response = post(
        &app,
        &key,
        &json!({
            "model": FAKE_MODEL,
            "messages": [{"role": "user", "content": "go"}],
            "stream": true,
        }),
    )
    .await;
    response.assert_status(200);
    let last = response
        .text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let error: Value = serde_json::from_str(last).unwrap();
    assert!(error["error"]["message"].is_string(), "{last}");
    assert!(!response.text.contains("[DONE]"));
    let conversation = response.header("x-conversation-id").unwrap();
    let messages = app.messages(&jwt, conversation).await;
    assert_eq!(messages[1]["content"], "half of a ");
    assert_eq!(messages[1]["message_metadata"]["incomplete"], true);
}

#[tokio::test]
async fn a_call_past_the_generation_limit_is_refused_with_429_and_leaves_nothing() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.limits.max_generations_per_user = 1),
    )
    .await;
    let jwt = app.token("lou", USER);
    let key = new_key(&app, &jwt).await;
    app.llm().script(Behaviour::reply_slowly(
        "a reply that takes its time to finish",
        Duration::from_millis(50),
    ));
    let body = json!({
        "model": FAKE_MODEL,
        "messages": [{"role": "user", "content": "first"}],
        "stream": true,
    });
    let first = app
        .request(Method::POST, COMPLETIONS)
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("the first call starts");
    assert_eq!(first.status(), 200);
    assert_eq!(app.conversations().await.len(), 1);
    let error = openai_error(&post(&app, &key, &body).await, 429);
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["type"], "requests");
    assert_eq!(
        app.conversations().await.len(),
        1,
        "no conversation left behind"
    );
    let text = first.text().await.expect("the first call ends");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}
