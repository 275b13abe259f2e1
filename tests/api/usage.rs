//! Usage accounting and limits: the ledger against what the LLM reported (tool rounds too,
//! estimates marked), usage and limits queries and who may read them, the message rate and
//! both token budgets over REST, SSE and both WebSocket endpoints, admin overrides, exact
//! limits across two instances on one Redis, and a Redis that stops.

use chrono::{Datelike, Months, NaiveDate, TimeZone, Utc};
use serde_json::{json, Value};

use crate::fake_llm::{prompt_tokens, Behaviour, FAKE_MODEL};
use crate::fake_mcp::FakeMcp;
use crate::helpers::*;
use crate::live::{two_instances, unique_prefix, wait_for_redis, OwnRedis};

/// A user with a conversation.
struct Chatter {
    name: String,
    token: String,
    conversation: String,
}

async fn chatter(app: &TestApp, name: &str) -> Chatter {
    let token = app.token(name, USER);
    let conversation = app.new_conversation(&token).await;
    Chatter {
        name: name.to_owned(),
        token,
        conversation,
    }
}

async fn my_usage(app: &TestApp, token: &str, query: &str) -> Value {
    let path = format!("/api/v1/users/me/usage{query}");
    app.get(&path, token).await.assert_status(200).json()
}

/// Asserts a REST refusal by `limit`: 429, `Retry-After` equal to the body's `retry_after`.
fn assert_refused(response: &TestResponse, limit: &str) -> u64 {
    assert_eq!(response.status, 429, "{}", response.text);
    let body = response.json();
    assert_eq!(body["limit"], limit, "{body}");
    let retry_after = body["retry_after"].as_u64().expect("retry_after");
    assert!(retry_after >= 1);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    let header: u64 = response
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert_eq!(header, retry_after);
    retry_after
}

/// Asserts a WebSocket failure frame of `send_message` refused by `limit`.
fn assert_refused_frame(frame: &Value, limit: &str, conversation: &str) -> u64 {
    assert_eq!(frame["type"], "send_message", "{frame}");
    assert_eq!(frame["success"], false, "{frame}");
    assert_eq!(frame["limit"], limit, "{frame}");
    assert_eq!(frame["data"]["conversation_id"], conversation, "{frame}");
    assert!(frame["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(frame["detail"], frame["error"]);
    frame["retry_after"].as_u64().expect("retry_after")
}

/// Sends a turn over REST, SSE, `/ws/chat/{user}` and `/ws/{conversation}`, and asserts each
/// is refused by `limit` with nothing stored; answers the `Retry-After`s seen.
async fn refused_everywhere(app: &TestApp, who: &Chatter, limit: &str) -> Vec<u64> {
    let before = app.messages(&who.token, &who.conversation).await.len();
    let mut waits = Vec::new();

    let rest = app.chat(&who.token, &who.conversation, "again").await;
    waits.push(assert_refused(&rest, limit));

    let sse = app
        .chat_stream(&who.token, &who.conversation, "again")
        .await;
    assert_eq!(sse.status, 429, "{}", sse.text);
    assert!(sse.text.contains("event: error"), "{}", sse.text);
    let data = sse
        .text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("an error event's data");
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["limit"], limit, "{event}");
    assert_eq!(event["conversation_id"], who.conversation.as_str());
    let header: u64 = sse.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(event["retry_after"].as_u64(), Some(header));
    waits.push(header);

    for path in [
        format!("/ws/chat/{}?token={}", who.name, who.token),
        format!("/ws/{}?token={}", who.conversation, who.token),
    ] {
        let mut ws = app.connect(&path).await;
        ws.send(json!({"type": "send_message",
            "data": {"conversation_id": who.conversation, "content": "again"}}))
            .await;
        let frame = ws.next().await;
        waits.push(assert_refused_frame(&frame, limit, &who.conversation));
    }
    let after = app.messages(&who.token, &who.conversation).await.len();
    assert_eq!(after, before, "a refused turn stored nothing");
    waits
}

fn seconds_until(time: chrono::DateTime<Utc>) -> i64 {
    (time - Utc::now()).num_seconds()
}

fn next_midnight() -> chrono::DateTime<Utc> {
    let tomorrow = Utc::now().date_naive().succ_opt().unwrap();
    Utc.from_utc_datetime(&tomorrow.and_time(Default::default()))
}

fn next_month() -> chrono::DateTime<Utc> {
    let today = Utc::now().date_naive();
    let first = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap();
    let next = first.checked_add_months(Months::new(1)).unwrap();
    Utc.from_utc_datetime(&next.and_time(Default::default()))
}

#[tokio::test]
async fn the_message_rate_is_limited_over_rest_sse_and_both_websockets() {
    let app =
        spawn_app_with(TestOptions::new().settings(|s| s.usage.messages_per_minute = 2)).await;
    let ann = chatter(&app, "ann").await;
    app.chat(&ann.token, &ann.conversation, "one")
        .await
        .assert_status(200);
    app.chat(&ann.token, &ann.conversation, "two")
        .await
        .assert_status(200);
    // Two a minute in bursts of two: the third waits half a minute from the first.
    for wait in refused_everywhere(&app, &ann, "messages_per_minute").await {
        assert!((25..=30).contains(&wait), "Retry-After {wait}");
    }
    // Another user has a bucket of their own.
    let bob = chatter(&app, "bob").await;
    app.chat(&bob.token, &bob.conversation, "hi")
        .await
        .assert_status(200);
    let metrics = app.scrape().await;
    assert!(metrics.value("usage_refusals_total", &[("limit", "messages_per_minute")]) >= 4.0);
    app.stop().await;
}

#[tokio::test]
async fn anonymous_chat_is_limited_per_client_address() {
    let app =
        spawn_app_with(TestOptions::new().settings(|s| s.usage.anon_messages_per_minute = 1)).await;
    let mut ws = app.connect("/ws/chat").await;
    let conversation = ws.start().await;
    let (_, answer) = ws.chat(&conversation, "hello").await;
    assert_eq!(answer["success"], true, "{answer}");
    ws.send(json!({"type": "send_message",
        "data": {"conversation_id": conversation, "content": "again"}}))
        .await;
    let wait = assert_refused_frame(&ws.next().await, "messages_per_minute", &conversation);
    assert!((55..=60).contains(&wait), "{wait}");
    // The same address on another connection shares the bucket.
    let mut other = app.connect("/ws/chat").await;
    let second = other.start().await;
    other
        .send(json!({"type": "send_message",
            "data": {"conversation_id": second, "content": "hi"}}))
        .await;
    assert_refused_frame(&other.next().await, "messages_per_minute", &second);
    app.stop().await;
}

/// With a budget of 5 tokens set by `change`, one turn is admitted (under the budget) and
/// takes the period past it; then every way of chatting is refused by `limit` until `reset`.
/// `other` (a role without that budget) chats on.
async fn a_budget_refuses_until_it_resets(
    change: impl FnOnce(&mut Settings) + Send + 'static,
    limit: &str,
    reset: chrono::DateTime<Utc>,
    other: &[&str],
) {
    let app = spawn_app_with(TestOptions::new().fake_llm().settings(change)).await;
    let cid = chatter(&app, "cid").await;
    app.chat(&cid.token, &cid.conversation, "spend it all")
        .await
        .assert_status(200);
    let left = seconds_until(reset);
    for wait in refused_everywhere(&app, &cid, limit).await {
        let wait = i64::try_from(wait).unwrap();
        assert!((wait - left).abs() <= 5, "{wait} vs {left}");
    }
    let theirs = app.token("root", other);
    let conversation = app.new_conversation(&theirs).await;
    for _ in 0..2 {
        app.chat(&theirs, &conversation, "hi")
            .await
            .assert_status(200);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_daily_budget_refuses_until_midnight_everywhere() {
    // Admins are unlimited unless their role has a budget.
    let change = |s: &mut Settings| s.usage.daily = Some(5);
    a_budget_refuses_until_it_resets(change, "tokens_per_day", next_midnight(), ADMIN).await;
}

#[tokio::test]
async fn the_monthly_budget_refuses_until_the_next_month_everywhere() {
    // Managers have no budget of their role here, and TOKEN_BUDGET_MONTHLY is unset.
    let change = |s: &mut Settings| s.usage.monthly_user = Some(5);
    a_budget_refuses_until_it_resets(change, "tokens_per_month", next_month(), MANAGER).await;
}

#[tokio::test]
async fn an_admin_overrides_a_users_limits_and_takes_them_back() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.usage.daily = Some(1)),
    )
    .await;
    let eve = chatter(&app, "eve").await;
    let admin = app.token("root", ADMIN);
    let path = "/api/v1/admin/users/eve/limits";
    let none = app.get(path, &admin).await.assert_status(200).json();
    assert_eq!(
        none,
        json!({"user_id": app.my_id(&eve.token).await, "tokens_per_day": null,
            "tokens_per_month": null, "messages_per_minute": null})
    );
    app.chat(&eve.token, &eve.conversation, "hi")
        .await
        .assert_status(200);
    let refused = app.chat(&eve.token, &eve.conversation, "more").await;
    assert_refused(&refused, "tokens_per_day");

    let raised = app
        .put_json(path, &admin, &json!({"tokens_per_day": 1_000_000}))
        .await
        .assert_status(200)
        .json();
    assert_eq!(raised["tokens_per_day"], 1_000_000);
    let standing = app
        .get("/api/v1/users/me/limits", &eve.token)
        .await
        .assert_status(200)
        .json();
    assert_eq!(standing["tokens_per_day"]["limit"], 1_000_000);
    app.chat(&eve.token, &eve.conversation, "more")
        .await
        .assert_status(200);

    // Absent fields are kept; a rate of her own applies at once.
    let slowed = app
        .put_json(path, &admin, &json!({"messages_per_minute": 1}))
        .await
        .assert_status(200)
        .json();
    assert_eq!(slowed["tokens_per_day"], 1_000_000);
    assert_eq!(slowed["messages_per_minute"], 1);
    app.chat(&eve.token, &eve.conversation, "once")
        .await
        .assert_status(200);
    let refused = app.chat(&eve.token, &eve.conversation, "twice").await;
    assert_refused(&refused, "messages_per_minute");

    // `null` is the role's default again.
    let back = app
        .put_json(
            path,
            &admin,
            &json!({"tokens_per_day": null, "messages_per_minute": null}),
        )
        .await
        .assert_status(200)
        .json();
    assert_eq!(back["tokens_per_day"], Value::Null);
    let refused = app.chat(&eve.token, &eve.conversation, "more").await;
    assert_refused(&refused, "tokens_per_day");

    // Bad bodies name the field; nothing changes.
    for body in [
        json!({"tokens_per_day": -1}),
        json!({"tokens_per_day": "lots"}),
        json!({"messages_per_minute": 0}),
        json!({"tokens_per_month": 1.5}),
        json!([null, null]),
        json!("tokens_per_day"),
    ] {
        let response = app.put_json(path, &admin, &body).await;
        assert_eq!(response.status, 422, "{body}: {}", response.text);
    }
    let malformed = app
        .request(reqwest::Method::PUT, path)
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"tokens_per_day\": ");
    assert_eq!(app.send(malformed).await.status, 422);
    let unchanged = app.get(path, &admin).await.json();
    assert_eq!(unchanged["tokens_per_day"], Value::Null);
    // A number with a zero fraction is an integer; unknown keys are ignored.
    let whole = app
        .put_json(
            path,
            &admin,
            &json!({"tokens_per_month": 12.0, "note": "x"}),
        )
        .await
        .assert_status(200)
        .json();
    assert_eq!(whole["tokens_per_month"], 12);
    app.stop().await;
}

#[tokio::test]
async fn usage_and_limits_of_others_are_not_readable() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let fay = chatter(&app, "fay").await;
    let gus = chatter(&app, "gus").await;
    app.chat(&gus.token, &gus.conversation, "hi")
        .await
        .assert_status(200);
    let gus_id = app.my_id(&gus.token).await;
    let admin = app.token("root", ADMIN);
    let manager = app.token("mona", MANAGER);

    // A user reads only their own.
    let mine = my_usage(&app, &fay.token, "").await;
    assert_eq!(mine["totals"]["requests"], 0);
    for path in [
        format!("/api/v1/admin/usage?user_id={gus_id}"),
        "/api/v1/admin/usage".to_owned(),
        format!("/api/v1/admin/users/{gus_id}/limits"),
        "/api/v1/admin/users/gus/limits".to_owned(),
    ] {
        app.get(&path, &fay.token).await.assert_status(403);
    }
    app.put_json(
        "/api/v1/admin/users/gus/limits",
        &fay.token,
        &json!({"tokens_per_day": 1}),
    )
    .await
    .assert_status(403);
    // Managers read, and may not change.
    let theirs = app
        .get(&format!("/api/v1/admin/usage?user_id={gus_id}"), &manager)
        .await
        .assert_status(200)
        .json();
    assert_eq!(theirs["totals"]["requests"], 1);
    app.get("/api/v1/admin/users/gus/limits", &manager)
        .await
        .assert_status(200);
    app.put_json(
        "/api/v1/admin/users/gus/limits",
        &manager,
        &json!({"tokens_per_day": 1}),
    )
    .await
    .assert_status(403);
    // Unknown users are 404, bad parameters 422, no token 401.
    for path in [
        "/api/v1/admin/usage?user_id=nobody",
        "/api/v1/admin/users/nobody/limits",
        "/api/v1/admin/users/AAAAAAAAAAAAAAAA/limits",
    ] {
        app.get(path, &admin).await.assert_status(404);
    }
    // A period that ends before it starts holds nothing.
    let backwards = my_usage(&app, &gus.token, "?from=2030-12-08&to=2030-12-01").await;
    assert_eq!(backwards["totals"]["requests"], 0);
    for query in ["?group_by=week", "?from=yesterday", "?to=2026-13-01"] {
        let response = app
            .get(&format!("/api/v1/users/me/usage{query}"), &fay.token)
            .await;
        assert_eq!(response.status, 422, "{query}: {}", response.text);
    }
    app.get("/api/v1/admin/usage?group_by=conversation", &admin)
        .await
        .assert_status(422);
    let anonymous = app.get_public("/api/v1/users/me/limits").await;
    assert_eq!(anonymous.status, 401);
    app.get("/api/v1/users/me/usage", &app.expired_token("fay"))
        .await
        .assert_status(401);
    app.stop().await;
}

#[tokio::test]
async fn usage_sums_what_the_llm_reported_including_tool_rounds() {
    let mcp = FakeMcp::start_rmcp().await;
    let authority = mcp.authority();
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(move |s| s.mcp.allowed_hosts = vec![authority]),
    )
    .await;
    let hal = chatter(&app, "hal").await;
    app.post_json(
        "/api/v1/mcp-servers/",
        &hal.token,
        &json!({"name": "time", "server_url": mcp.url()}),
    )
    .await
    .assert_status(201);
    app.llm().script(Behaviour::tool_call(
        "get_current_time",
        json!({"timezone": "Asia/Tokyo"}),
    ));
    app.llm()
        .script(Behaviour::reply("In Tokyo it is noon now."));
    app.chat(&hal.token, &hal.conversation, "What time is it in Tokyo?")
        .await
        .assert_status(200);

    // What the fake reported: (3, 5) for the tool call, then its word count and one token a
    // chunk for the answer.
    let requests = app.llm().requests();
    assert_eq!(requests.len(), 2);
    let answer_prompt = i64::try_from(prompt_tokens(&requests[1].body)).unwrap();
    let (prompt, completion) = (3 + answer_prompt, 5 + 6);

    let usage = my_usage(&app, &hal.token, "?group_by=model").await;
    let totals = &usage["totals"];
    assert_eq!(totals["prompt_tokens"], prompt, "{usage}");
    assert_eq!(totals["completion_tokens"], completion, "{usage}");
    assert_eq!(totals["total_tokens"], prompt + completion);
    assert_eq!(totals["requests"], 2);
    assert_eq!(totals["estimated"], 0.0);
    assert_eq!(usage["groups"][0]["key"], FAKE_MODEL);
    assert_eq!(usage["groups"][0]["requests"], 2);

    let by_day = my_usage(&app, &hal.token, "?group_by=day").await;
    let today = Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(by_day["groups"][0]["key"], today.as_str());
    let standing = app
        .get("/api/v1/users/me/limits", &hal.token)
        .await
        .assert_status(200)
        .json();
    assert_eq!(standing["tokens_per_day"]["used"], prompt + completion);
    assert_eq!(standing["tokens_per_day"]["limit"], Value::Null);
    assert_eq!(standing["messages_per_minute"]["limit"], Value::Null);
    // A period before any call has none.
    let before = my_usage(&app, &hal.token, "?from=2020-01-01&to=2020-01-31").await;
    assert_eq!(before["totals"]["requests"], 0);

    let metrics = app.scrape().await;
    let labels = [("model", FAKE_MODEL), ("kind", "completion")];
    assert!(metrics.value("llm_tokens_total", &labels) >= completion as f64);
    app.stop().await;
}

#[tokio::test]
async fn usage_without_a_report_is_estimated_and_marked() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    app.llm().without_usage();
    let ida = chatter(&app, "ida").await;
    app.chat(&ida.token, &ida.conversation, "count this please")
        .await
        .assert_status(200);
    let usage = my_usage(&app, &ida.token, "").await;
    let totals = &usage["totals"];
    assert!(totals["prompt_tokens"].as_i64().unwrap() > 0, "{usage}");
    assert!(totals["completion_tokens"].as_i64().unwrap() > 0, "{usage}");
    assert_eq!(totals["estimated_tokens"], totals["total_tokens"]);
    assert_eq!(totals["estimated"], 1.0);
    let messages = app.messages(&ida.token, &ida.conversation).await;
    assert_eq!(messages[1]["message_metadata"]["usage_estimated"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_conversation_keeps_its_usage_and_a_deleted_user_does_not() {
    let app = spawn_app_with(TestOptions::new().fake_llm()).await;
    let jan = chatter(&app, "jan").await;
    app.chat(&jan.token, &jan.conversation, "hi")
        .await
        .assert_status(200);
    let admin = app.token("root", ADMIN);
    app.delete(
        &format!("/api/v1/users/me/conversations/{}", jan.conversation),
        &jan.token,
    )
    .await
    .assert_status(200);
    let usage = my_usage(&app, &jan.token, "?group_by=conversation").await;
    assert_eq!(usage["totals"]["requests"], 1);
    assert_eq!(usage["groups"][0]["key"], jan.conversation.as_str());

    let by_user = app
        .get("/api/v1/admin/usage?group_by=user", &admin)
        .await
        .assert_status(200)
        .json();
    let jan_id = app.my_id(&jan.token).await;
    assert_eq!(by_user["groups"][0]["key"], jan_id.as_str());
    app.delete(&format!("/api/v1/users/{jan_id}"), &admin)
        .await
        .assert_status(200);
    let after = app
        .get("/api/v1/admin/usage", &admin)
        .await
        .assert_status(200)
        .json();
    assert_eq!(after["totals"]["requests"], 0, "{after}");
    app.stop().await;
}

#[tokio::test]
async fn two_instances_on_one_redis_admit_exactly_the_limit() {
    let Some((a, b)) = two_instances(|s| {
        s.usage.messages_per_minute = 5;
        s.limits.max_generations_per_user = 100;
    })
    .await
    else {
        return;
    };
    let token = a.token("kim", USER);
    let mut conversations = Vec::new();
    for _ in 0..20 {
        conversations.push(a.new_conversation(&token).await);
    }
    let sends = conversations.iter().enumerate().map(|(i, conversation)| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.chat(&token, conversation, "at once")
    });
    let answers = futures::future::join_all(sends).await;
    let admitted = answers.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        admitted,
        5,
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(refused.len(), 15);
    for response in refused {
        assert_refused(response, "messages_per_minute");
    }
    let mut stored = 0;
    for conversation in &conversations {
        stored += a.messages(&token, conversation).await.len();
    }
    assert_eq!(
        stored, 10,
        "two messages per admitted turn, none for the others"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_budget_spent_on_one_instance_is_refused_on_the_other() {
    let Some((a, b)) = two_instances(|s| s.usage.daily = Some(5)).await else {
        return;
    };
    let token = a.token("ivy", USER);
    let conversation = a.new_conversation(&token).await;
    a.chat(&token, &conversation, "spend the whole day's budget")
        .await
        .assert_status(200);
    // b's running total comes from the shared Redis, or is rebuilt there from the ledger.
    let refused = b.chat(&token, &conversation, "and some more").await;
    assert_refused(&refused, "tokens_per_day");
    assert_eq!(a.messages(&token, &conversation).await.len(), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn limits_fall_back_to_local_counters_while_redis_is_down() {
    let mut redis = OwnRedis::start().await;
    let app = spawn_app_with(
        TestOptions::new()
            .redis(&redis.url(), &unique_prefix())
            .settings(|s| s.usage.messages_per_minute = 2),
    )
    .await;
    let lou = chatter(&app, "lou").await;
    // Two admitted, the third refused.
    let burst = || async {
        for _ in 0..2 {
            app.chat(&lou.token, &lou.conversation, "hi")
                .await
                .assert_status(200);
        }
        let refused = app.chat(&lou.token, &lou.conversation, "hi").await;
        assert_refused(&refused, "messages_per_minute");
    };
    burst().await;
    let before = app.scrape().await.value("usage_limits_local_total", &[]);

    redis.stop().await;
    wait_for_redis(&app, "unreachable").await;
    // This instance's own counters start empty: the rate holds here alone.
    burst().await;
    let after = app.scrape().await.value("usage_limits_local_total", &[]);
    assert!(after >= before + 3.0, "{before} -> {after}");
    app.stop().await;
}

#[tokio::test]
async fn a_title_written_by_the_llm_counts_against_the_conversations_owner() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.titles.auto_title = true),
    )
    .await;
    let token = app.token("mia", USER);
    // Untitled, so its first reply earns it a title.
    let created = app.create_conversation(&token, &json!({})).await;
    let conversation = created["id"].as_str().unwrap().to_owned();
    app.chat(&token, &conversation, "Plan a trip to Lisbon")
        .await
        .assert_status(200);
    eventually("the title's call is recorded", PATIENCE, || async {
        my_usage(&app, &token, "").await["totals"]["requests"] == 2
    })
    .await;
    let requests = app.llm().requests();
    assert_eq!(requests.len(), 2, "the reply and the title");
    let usage = my_usage(&app, &token, "?group_by=conversation").await;
    assert_eq!(usage["groups"][0]["key"], conversation.as_str());
    app.stop().await;
}

#[tokio::test]
async fn the_openai_compatible_api_is_admitted_and_counted() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.usage.messages_per_minute = 1),
    )
    .await;
    let jwt = app.token("ned", USER);
    let key = crate::api_keys::new_key(&app, &jwt).await;
    let body = json!({
        "model": FAKE_MODEL,
        "messages": [{"role": "user", "content": "count me"}],
    });
    let call = |body| {
        app.call(
            reqwest::Method::POST,
            "/v1/chat/completions",
            Some(&key),
            Some(body),
        )
    };
    call(&body).await.assert_status(200);
    let usage = my_usage(&app, &jwt, "").await;
    assert_eq!(usage["totals"]["requests"], 1, "{usage}");
    assert!(usage["totals"]["total_tokens"].as_i64().unwrap() > 0);
    let conversations = app.conversations().await.len();

    let refused = call(&body).await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    let error = &refused.json()["error"];
    assert_eq!(error["code"], "messages_per_minute", "{error}");
    let header: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((55..=60).contains(&header), "{header}");
    assert_eq!(
        app.conversations().await.len(),
        conversations,
        "nothing stored"
    );
    // The same bucket as the chat: one message a minute in all.
    let conversation = app.new_conversation(&jwt).await;
    assert_refused(
        &app.chat(&jwt, &conversation, "hi").await,
        "messages_per_minute",
    );
    app.stop().await;
}

#[tokio::test]
async fn regenerate_and_edit_count_as_messages() {
    let app = spawn_app_with(
        TestOptions::new()
            .fake_llm()
            .settings(|s| s.usage.messages_per_minute = 1),
    )
    .await;
    let oli = chatter(&app, "oli").await;
    let answer = app
        .chat(&oli.token, &oli.conversation, "hi")
        .await
        .assert_status(200)
        .json();
    let (question, reply) = (
        answer["user_message"]["id"].as_str().unwrap(),
        answer["ai_response"]["id"].as_str().unwrap(),
    );
    let base = format!("/api/v1/conversations/{}/messages", oli.conversation);
    let regenerate = app
        .post(&format!("{base}/{reply}/regenerate"), &oli.token)
        .await;
    assert_refused(&regenerate, "messages_per_minute");
    let edit = app
        .post_json(
            &format!("{base}/{question}/edit"),
            &oli.token,
            &json!({"content": "hello"}),
        )
        .await;
    assert_refused(&edit, "messages_per_minute");
    let mut ws = app
        .connect(&format!("/ws/chat/oli?token={}", oli.token))
        .await;
    ws.send(json!({"type": "regenerate",
        "data": {"conversation_id": oli.conversation, "message_id": reply}}))
        .await;
    let frame = ws.next().await;
    assert_eq!(frame["type"], "regenerate", "{frame}");
    assert_eq!(frame["limit"], "messages_per_minute", "{frame}");
    assert_eq!(app.messages(&oli.token, &oli.conversation).await.len(), 2);
    app.stop().await;
}
