//! Analytics: what reaches the analytics service, and that it never slows a request down.

use std::time::Duration;

use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::fake_analytics::{Behaviour, HangUpReceiver};
use crate::helpers::{
    closed_port_url, spawn_app, spawn_app_with, wait_until, DeliveryOptions, TestApp, TestOptions,
    API_USAGE_PATH, CONVERSATION_PATH, MESSAGE_PATH, PATIENCE, SYNC_PROFILE_PATH, USERS_PATH,
};
use crate::scrape::Scrape;

fn is_timestamp(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
}

/// A token for `sub` with these roles and the email `<sub>@example.com`.
fn email_token(app: &TestApp, sub: &str, roles: &[&str]) -> String {
    app.token_with_email(sub, roles, &format!("{sub}@example.com"))
}

/// Sends `count` authenticated requests at once and asserts they all succeed.
async fn burst(app: &TestApp, token: &str, count: usize) {
    let requests = (0..count).map(|_| async {
        app.request(Method::GET, "/api/v1/users/me/conversations")
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
            .status()
    });
    let statuses = tokio::time::timeout(PATIENCE, join_all(requests))
        .await
        .expect("requests complete while analytics is unavailable");
    assert!(statuses.iter().all(|s| s.is_success()), "{statuses:?}");
}

#[tokio::test]
async fn api_usage_names_the_route_template_caller_status_and_time() {
    let app = spawn_app_with(TestOptions::new().analytics(Behaviour::Accept)).await;
    let receiver = app.receiver();
    let token = email_token(&app, "alice", &["user"]);
    let alice = app.my_id(&token).await;

    app.get("/api/v1/users/alice/conversations/", &token)
        .await
        .assert_status(200)
        .json();
    let event = receiver
        .wait_for_event(API_USAGE_PATH, |b| {
            b["endpoint"] == "/api/v1/users/{user_id}/conversations"
        })
        .await;
    assert_eq!(event.method, Method::POST);
    let body = event.body;
    assert_eq!(body["method"], "GET");
    assert_eq!(body["user_id"], alice.as_str());
    assert_eq!(body["status_code"], 200);
    assert!(body["response_time"].as_f64().is_some_and(|t| t >= 0.0));
    let ms = body["response_time_ms"].as_f64().unwrap();
    let seconds = body["response_time"].as_f64().unwrap();
    assert!((ms - seconds * 1000.0).abs() < 1e-6);
    assert!(is_timestamp(&body["timestamp"]), "{body}");

    let response = app.get_public("/api/v1/users/me").await;
    assert_eq!(response.status, 401);
    let anonymous = receiver
        .wait_for_event(API_USAGE_PATH, |b| b["status_code"] == 401)
        .await;
    assert_eq!(anonymous.body["endpoint"], "/api/v1/users/me");
    assert_eq!(anonymous.body["user_id"], Value::Null);

    let response = app.get("/no/such/path/123", &token).await;
    assert_eq!(response.status, 404);
    let unmatched = receiver
        .wait_for_event(API_USAGE_PATH, |b| b["status_code"] == 404)
        .await;
    assert_eq!(unmatched.body["endpoint"], "unmatched");
    app.stop().await;
}

#[tokio::test]
async fn a_new_user_is_synced_once_with_profile_and_roles() {
    let app = spawn_app_with(TestOptions::new().analytics(Behaviour::Accept)).await;
    let receiver = app.receiver();
    let token = email_token(&app, "carol", &["user", "manager"]);
    let carol = app.my_id(&token).await;
    let sync = receiver
        .wait_for_event(SYNC_PROFILE_PATH, |b| b["username"] == "carol")
        .await;
    assert_eq!(sync.method, Method::POST);
    assert_eq!(sync.body["user_id"], carol.as_str());
    assert_eq!(sync.body["email"], "carol@example.com");
    assert_eq!(sync.body["role"], "manager");
    assert_eq!(sync.body["roles"], json!(["user", "manager"]));
    assert_eq!(sync.query["user_id"], carol);
    assert_eq!(sync.query["username"], "carol");
    assert_eq!(sync.query["email"], "carol@example.com");

    // A known user is not synced again.
    app.me(&token).await;
    receiver
        .wait_for(|all| {
            all.iter()
                .filter(|r| r.path == API_USAGE_PATH && r.body["user_id"] == carol.as_str())
                .count()
                >= 2
        })
        .await;
    let syncs = receiver
        .received()
        .iter()
        .filter(|r| r.path == SYNC_PROFILE_PATH)
        .count();
    assert_eq!(syncs, 1);
    app.stop().await;
}

#[tokio::test]
async fn conversation_lifecycle_and_messages_are_tracked_with_public_ids() {
    let app = spawn_app_with(TestOptions::new().analytics(Behaviour::Accept)).await;
    let receiver = app.receiver();
    let token = email_token(&app, "dave", &["user"]);
    let dave = app.my_id(&token).await;
    let base = "/api/v1/users/me/conversations";

    let created = app
        .create_conversation(&token, &json!({"title": "Plans"}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let event = receiver
        .wait_for_event(CONVERSATION_PATH, |b| b["action"] == "created")
        .await;
    assert_eq!(event.body["conversation_id"], id.as_str());
    assert_eq!(event.body["user_id"], dave.as_str());
    assert_eq!(event.body["title"], "Plans");
    assert!(is_timestamp(&event.body["timestamp"]));

    let message = app
        .add_message(
            &token,
            &id,
            &json!({"role": "assistant", "content": "Hi", "model": "m-1",
                "tokens_used": 12, "response_time": 1500.0}),
        )
        .await;
    let event = receiver.wait_for_event(MESSAGE_PATH, |_| true).await;
    assert_eq!(event.body["message_id"], message["id"]);
    assert_eq!(event.body["conversation_id"], id.as_str());
    assert_eq!(event.body["user_id"], dave.as_str());
    assert_eq!(event.body["role"], "assistant");
    assert_eq!(event.body["token_count"], 12);
    assert_eq!(event.body["response_time"], 1.5);
    assert_eq!(event.body["model_used"], "m-1");

    for _ in 0..2 {
        app.post(&format!("{base}/{id}/end"), &token)
            .await
            .assert_status(200)
            .json();
    }
    receiver
        .wait_for_event(CONVERSATION_PATH, |b| b["action"] == "ended")
        .await;
    app.delete(&format!("{base}/{id}"), &token)
        .await
        .assert_status(200)
        .json();
    let deleted = receiver
        .wait_for_event(CONVERSATION_PATH, |b| b["action"] == "deleted")
        .await;
    assert_eq!(deleted.body["conversation_id"], id.as_str());
    let ended = receiver
        .received()
        .iter()
        .filter(|r| r.path == CONVERSATION_PATH && r.body["action"] == "ended")
        .count();
    assert_eq!(ended, 1, "ending twice records one event");

    // An admin's deletion still names the owner.
    let other = app.create_conversation(&token, &json!({})).await;
    let other = other["id"].as_str().unwrap().to_owned();
    let admin = email_token(&app, "root", &["admin"]);
    app.delete(&format!("/api/v1/admin/conversations/{other}"), &admin)
        .await
        .assert_status(200)
        .json();
    let deleted = receiver
        .wait_for_event(CONVERSATION_PATH, |b| {
            b["action"] == "deleted" && b["conversation_id"] == other.as_str()
        })
        .await;
    assert_eq!(deleted.body["user_id"], dave.as_str());
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_user_deletes_their_analytics_with_a_service_token() {
    let app = spawn_app_with(TestOptions::new().analytics(Behaviour::Accept)).await;
    let receiver = app.receiver();
    let erin = app.my_id(&email_token(&app, "erin", &["user"])).await;
    let admin = email_token(&app, "root", &["admin"]);
    app.delete(&format!("/api/v1/users/{erin}"), &admin)
        .await
        .assert_status(200)
        .json();
    let path = format!("{USERS_PATH}/erin");
    let received = receiver
        .wait_for(|all| all.iter().any(|r| r.path == path))
        .await;
    let request = received.iter().find(|r| r.path == path).unwrap();
    assert_eq!(request.method, Method::DELETE);
    assert_eq!(request.query["user_id"], erin);
    let token = request
        .authorization
        .as_deref()
        .and_then(|h| h.strip_prefix("Bearer "))
        .expect("a bearer token");
    let claims = app
        .state
        .jwt
        .verify(token)
        .expect("a token the platform accepts");
    assert_eq!(claims.roles, vec!["admin".to_owned()]);
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_service_slows_nothing_and_overflow_is_dropped_and_counted() {
    let options = TestOptions::new()
        .analytics(Behaviour::Stall)
        .delivery(|d| {
            // Stalled deliveries hold their slots for the whole test: the overflow is certain.
            d.request_timeout = Duration::from_secs(600);
            d.concurrency = 4;
        })
        .settings(|s| s.analytics_queue_capacity = 4);
    let app = spawn_app_with(options).await;
    let receiver = app.receiver();
    let before = app.scrape().await;
    let token = email_token(&app, "frank", &["user"]);
    burst(&app, &token, 50).await;

    let stats = app.state.analytics.stats();
    // 50 API usage events and one profile sync, each accepted or dropped.
    assert_eq!(stats.accepted + stats.dropped, 51, "{stats:?}");
    // At most the queue's 4 and the 4 in flight got in.
    assert!(stats.dropped >= 51 - 4 - 4, "{stats:?}");
    assert_eq!(stats.sent, 0);
    let dropped = |scrape: &Scrape| {
        scrape.value(
            "analytics_events_dropped_total",
            &[("reason", "queue_full")],
        )
    };
    let after = app.scrape().await;
    assert!(dropped(&after) >= dropped(&before) + stats.dropped as f64);
    receiver.wait_for(|all| all.len() >= 4).await;
}

/// Five requests against a receiver that answers 500: their six events (and the profile
/// sync) are each attempted three times, then counted as failed.
async fn failing_service_gets_retries() {
    let options = TestOptions::new()
        .analytics(Behaviour::Fail)
        .quick_retries();
    let app = spawn_app_with(options).await;
    let receiver = app.receiver();
    let token = email_token(&app, "gina", &["user"]);
    burst(&app, &token, 5).await;
    wait_until("every event failed", PATIENCE, || {
        let s = app.state.analytics.stats();
        s.failed == 6 && s.pending == 0
    })
    .await;
    // Each event was attempted three times.
    assert_eq!(receiver.received().len(), 18);
    let scrape = app.scrape().await;
    assert!(scrape.value("analytics_events_failed_total", &[]) >= 6.0);
    app.stop().await;
}

#[tokio::test]
async fn a_failing_service_gets_retries_and_failures_are_counted() {
    failing_service_gets_retries().await;
}

#[tokio::test]
async fn an_unreachable_service_slows_nothing() {
    let options = TestOptions::new()
        .analytics_url(&closed_port_url())
        .quick_retries();
    let app = spawn_app_with(options).await;
    let token = email_token(&app, "hank", &["user"]);
    burst(&app, &token, 50).await;
    wait_until("every event was given up on", PATIENCE, || {
        let s = app.state.analytics.stats();
        s.failed + s.dropped == 51 && s.pending == 0
    })
    .await;
    assert_eq!(app.state.analytics.stats().sent, 0);
    app.stop().await;
}

#[tokio::test]
async fn without_a_url_nothing_is_queued() {
    let app = spawn_app().await;
    assert!(!app.state.analytics.is_enabled());
    let token = email_token(&app, "ivy", &["user"]);
    burst(&app, &token, 5).await;
    assert_eq!(app.state.analytics.stats(), Default::default());
    app.stop().await;
}

#[tokio::test]
async fn shutdown_flushes_pending_events() {
    let (gate, closed) = watch::channel(false);
    let options = TestOptions::new()
        .analytics(Behaviour::Gated(closed))
        .delivery(|d| d.concurrency = 2)
        .settings(|s| s.analytics_queue_capacity = 100);
    let app = spawn_app_with(options).await;
    let receiver = app.receiver().clone();
    let token = email_token(&app, "jack", &["user"]);
    burst(&app, &token, 20).await;
    let stats = app.state.analytics.stats();
    assert_eq!(stats.accepted, 21, "{stats:?}");
    assert!(
        stats.pending > 0,
        "the gate holds the deliveries: {stats:?}"
    );

    let analytics = app.state.analytics.clone();
    let stopping = tokio::spawn(app.stop());
    gate.send_replace(true);
    stopping.await.unwrap();
    let stats = analytics.stats();
    assert_eq!(
        (stats.sent, stats.pending, stats.dropped),
        (21, 0, 0),
        "{stats:?}"
    );
    let usage = receiver
        .received()
        .iter()
        .filter(|r| r.path == API_USAGE_PATH)
        .count();
    assert_eq!(usage, 20);
}

#[tokio::test]
async fn what_is_pending_at_the_deadline_is_dropped_and_later_events_too() {
    let options = TestOptions::new()
        .analytics(Behaviour::Stall)
        .delivery(|d| d.request_timeout = Duration::from_secs(600))
        .settings(|s| s.analytics_queue_capacity = 100);
    let app = spawn_app_with(options).await;
    let token = email_token(&app, "kim", &["user"]);
    burst(&app, &token, 10).await;
    let analytics = app.state.analytics.clone();
    assert!(!analytics.shutdown(Duration::from_millis(100)).await);
    let stats = analytics.stats();
    assert_eq!((stats.accepted, stats.dropped, stats.pending), (11, 11, 0));
    // Nothing is queued any more: the events of late requests are dropped at once.
    burst(&app, &token, 1).await;
    assert_eq!(analytics.stats().dropped, 12);
    assert!(analytics.shutdown(Duration::from_millis(100)).await);
    app.stop().await;
}

#[tokio::test]
async fn metrics_scrapes_are_not_api_usage() {
    let app = spawn_app_with(TestOptions::new().analytics(Behaviour::Accept)).await;
    let receiver = app.receiver().clone();
    let scrape = app.scrape().await;
    assert!(!scrape.samples().is_empty());
    let token = email_token(&app, "lee", &["user"]);
    app.me(&token).await;
    app.stop().await;
    assert!(receiver
        .received()
        .iter()
        .all(|r| r.body["endpoint"] != "/metrics"));
}

/// Waits until every one of `count` events was sent and none failed.
async fn all_sent(app: &TestApp, count: u64) {
    wait_until("every event was sent", PATIENCE, || {
        let s = app.state.analytics.stats();
        s.sent == count && s.pending == 0
    })
    .await;
    let stats = app.state.analytics.stats();
    assert_eq!((stats.failed, stats.dropped), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn a_burst_goes_over_a_few_kept_alive_connections() {
    // The burst opens 200 connections at once from one address, each unauthenticated until
    // its request is read: past the default MAX_CONNECTIONS_PER_IP, which is not under test.
    let app = spawn_app_with(
        TestOptions::new()
            .analytics(Behaviour::Accept)
            .settings(|s| s.limits.max_connections_per_ip = 0),
    )
    .await;
    let receiver = app.receiver();
    let token = email_token(&app, "kara", &["user"]);
    burst(&app, &token, 200).await;
    all_sent(&app, 201).await;
    let received = receiver.received();
    assert_eq!(received.len(), 201);
    let usage = received.iter().filter(|r| r.path == API_USAGE_PATH).count();
    assert_eq!(usage, 200);
    let connections = receiver.connections();
    assert!(
        (1..=DeliveryOptions::default().concurrency).contains(&connections),
        "{connections} connections"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_service_that_closes_every_connection_still_gets_each_event_once() {
    let app = spawn_app_with(
        TestOptions::new()
            .analytics(Behaviour::CloseEach)
            .quick_retries(),
    )
    .await;
    let receiver = app.receiver();
    let token = email_token(&app, "liam", &["user"]);
    burst(&app, &token, 40).await;
    all_sent(&app, 41).await;
    // The requests queued behind a `Connection: close` answer were not processed, and were
    // sent again on new connections.
    assert_eq!(receiver.received().len(), 41);
    assert_eq!(receiver.connections(), 41);
    app.stop().await;
}

#[tokio::test]
async fn a_service_that_hangs_up_after_one_chunked_answer_still_gets_every_event() {
    let receiver = HangUpReceiver::start().await;
    let options = TestOptions::new()
        .analytics_url(&receiver.url)
        .quick_retries();
    let app = spawn_app_with(options).await;
    let token = email_token(&app, "mona", &["user"]);
    burst(&app, &token, 30).await;
    all_sent(&app, 31).await;
    assert_eq!(receiver.answered(), 31);
    app.stop().await;
}
