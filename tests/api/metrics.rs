//! `GET /metrics`: Prometheus text that moves with the traffic.
//!
//! The recorder is shared by every server of this process, so tests assert that counters
//! rise by at least what they did, never on absolute values.

use std::time::Duration;

use crate::helpers::service_metrics::{self, TokenKind};
use crate::helpers::spawn_app;
use crate::scrape::Scrape;

#[tokio::test]
async fn metrics_are_public_prometheus_text_with_every_series() {
    let app = spawn_app().await;
    // Observed once so that series without a zero value exist too.
    service_metrics::llm_request(Duration::from_millis(5));
    service_metrics::llm_error("timeout");
    service_metrics::llm_tokens("unit-model", TokenKind::Prompt, 0);
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
        assert!(samples.has_series(name), "{name} missing");
    }
    app.get_public("/health").await;
    let samples = app.scrape().await;
    assert!(samples.has_series("http_requests_total"));
    assert!(samples.has_series("http_request_duration_seconds_bucket"));
    app.stop().await;
}

#[tokio::test]
async fn request_counters_and_latency_move_by_route_template() {
    let app = spawn_app().await;
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
        app.get(&format!("/api/v1/users/{id}"), &token)
            .await
            .assert_status(200)
            .json();
    }
    let not_found = app.get_public("/definitely/not/here").await;
    assert_eq!(not_found.status, 404);
    let after = app.scrape().await;

    let count = |s: &Scrape| s.value("http_requests_total", &labels);
    assert!(count(&after) >= count(&before) + 3.0);
    let observed = |s: &Scrape| s.value("http_request_duration_seconds_count", &route);
    assert!(observed(&after) >= observed(&before) + 3.0);
    let inf = |s: &Scrape| {
        s.value(
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
    assert!(after.value("http_requests_total", &unmatched) >= 1.0);
    // Raw paths never become labels.
    assert!(after
        .samples()
        .iter()
        .all(|s| s.labels.get("route").is_none_or(|r| !r.contains(&id))));
    app.stop().await;
}

#[tokio::test]
async fn helper_functions_reach_the_scrape() {
    let app = spawn_app().await;
    let tokens = |s: &Scrape| {
        s.value(
            "llm_tokens_total",
            &[("model", "unit-model"), ("kind", "completion")],
        )
    };
    let errors = |s: &Scrape| s.value("llm_errors_total", &[("kind", "rate_limited")]);
    let before = app.scrape().await;
    service_metrics::llm_tokens("unit-model", TokenKind::Completion, 42);
    service_metrics::llm_error("rate_limited");
    let guard = service_metrics::ws_connection_opened();
    let during = app.scrape().await;
    drop(guard);
    assert!(tokens(&during) >= tokens(&before) + 42.0);
    assert!(errors(&during) >= errors(&before) + 1.0);
    assert!(during.value("websocket_connections", &[]) >= 1.0);
    app.stop().await;
}
