//! `GET /metrics`: Prometheus text that moves with the traffic.
//!
//! The recorder is shared by every server of this process, so tests assert that counters
//! rise by at least what they did, never on absolute values.

use std::time::Duration;

use axum::http::Method;
use chat_service::metrics::{self as service_metrics, TokenKind};

use crate::analytics_support::{value, Sample, Setup, TestApp};

fn has_series(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

#[tokio::test]
async fn metrics_are_public_prometheus_text_with_every_series() {
    let app = TestApp::spawn(Setup::off()).await;
    // Observed once so that series without a zero value exist too.
    service_metrics::llm_request(Duration::from_millis(5));
    service_metrics::llm_error("timeout");
    service_metrics::analytics_dropped("queue_full", 0);
    let samples = app.scrape().await;
    for name in [
        "websocket_connections",
        "llm_generations_in_flight",
        "llm_request_duration_seconds_bucket",
        "llm_request_duration_seconds_count",
        "llm_tokens_total",
        "llm_errors_total",
        "analytics_events_sent_total",
        "analytics_events_failed_total",
        "analytics_events_dropped_total",
        "analytics_queue_depth",
    ] {
        assert!(has_series(&samples, name), "{name} missing");
    }
    app.request(Method::GET, "/health", None)
        .send()
        .await
        .unwrap();
    let samples = app.scrape().await;
    assert!(has_series(&samples, "http_requests_total"));
    assert!(has_series(&samples, "http_request_duration_seconds_bucket"));
    app.stop().await;
}

#[tokio::test]
async fn request_counters_and_latency_move_by_route_template() {
    let app = TestApp::spawn(Setup::off()).await;
    let token = app.token("mia", &["user"]);
    let id = app.my_id(&token).await;
    let labels = [
        ("method", "GET"),
        ("route", "/api/v1/users/{user_id}"),
        ("status", "200"),
    ];
    let route = [("route", "/api/v1/users/{user_id}")];
    let before = app.scrape().await;
    for _ in 0..3 {
        app.json(
            Method::GET,
            &format!("/api/v1/users/{id}"),
            &token,
            None,
            200,
        )
        .await;
    }
    let not_found = app
        .request(Method::GET, "/definitely/not/here", None)
        .send()
        .await
        .unwrap();
    assert_eq!(not_found.status(), 404);
    let after = app.scrape().await;

    let count = |s: &[Sample]| value(s, "http_requests_total", &labels);
    assert!(count(&after) >= count(&before) + 3.0);
    let observed = |s: &[Sample]| value(s, "http_request_duration_seconds_count", &route);
    assert!(observed(&after) >= observed(&before) + 3.0);
    let inf = |s: &[Sample]| {
        value(
            s,
            "http_request_duration_seconds_bucket",
            &[("route", "/api/v1/users/{user_id}"), ("le", "+Inf")],
        )
    };
    assert_eq!(
        inf(&after),
        observed(&after),
        "+Inf bucket counts everything"
    );
    let unmatched = [("method", "GET"), ("route", "unmatched"), ("status", "404")];
    assert!(value(&after, "http_requests_total", &unmatched) >= 1.0);
    // Raw paths never become labels.
    assert!(after
        .iter()
        .all(|s| s.labels.get("route").is_none_or(|r| !r.contains(&id))));
    app.stop().await;
}

#[tokio::test]
async fn helper_functions_reach_the_scrape() {
    let app = TestApp::spawn(Setup::off()).await;
    let tokens = |s: &[Sample]| value(s, "llm_tokens_total", &[("kind", "completion")]);
    let errors = |s: &[Sample]| value(s, "llm_errors_total", &[("kind", "rate_limited")]);
    let before = app.scrape().await;
    service_metrics::llm_tokens(TokenKind::Completion, 42);
    service_metrics::llm_error("rate_limited");
    let guard = service_metrics::ws_connection_opened();
    let during = app.scrape().await;
    drop(guard);
    assert!(tokens(&during) >= tokens(&before) + 42.0);
    assert!(errors(&during) >= errors(&before) + 1.0);
    assert!(value(&during, "websocket_connections", &[]) >= 1.0);
    app.stop().await;
}
