//! Prometheus metrics: the process-wide recorder, the `GET /metrics` endpoint and the small
//! functions the rest of the service calls to observe what it does.
//!
//! The `metrics` facade has one recorder per process, so the Prometheus recorder is installed
//! once ([`install`]) and shared by every server the process runs (tests run many). Callers
//! never touch the recorder: they call the functions below, which keep names and labels in
//! one place and their cardinality low (routes are templates, kinds are `&'static str`).
//!
//! `GET /metrics` is deliberately left out of the OpenAPI document and needs no token: it is
//! for the operators' scrapers, not for API clients; restrict it at the proxy if needed.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Requests answered, by `method`, `route` (the matched template) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Time to the response head, by `route`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// Open WebSocket connections.
pub const WEBSOCKET_CONNECTIONS: &str = "websocket_connections";
/// LLM generations running now.
pub const LLM_GENERATIONS_IN_FLIGHT: &str = "llm_generations_in_flight";
/// Duration of one LLM request, first byte to last.
pub const LLM_REQUEST_DURATION_SECONDS: &str = "llm_request_duration_seconds";
/// LLM tokens by `model` and `kind` (`prompt`, `completion`).
pub const LLM_TOKENS_TOTAL: &str = "llm_tokens_total";
/// LLM failures by `kind`.
pub const LLM_ERRORS_TOTAL: &str = "llm_errors_total";
/// Analytics events the analytics service accepted.
pub const ANALYTICS_EVENTS_SENT_TOTAL: &str = "analytics_events_sent_total";
/// Analytics events given up on after their retries.
pub const ANALYTICS_EVENTS_FAILED_TOTAL: &str = "analytics_events_failed_total";
/// Analytics events never delivered, by `reason` (`queue_full`, `shutdown`).
pub const ANALYTICS_EVENTS_DROPPED_TOTAL: &str = "analytics_events_dropped_total";
/// Analytics events accepted and not yet delivered or given up on.
pub const ANALYTICS_QUEUE_DEPTH: &str = "analytics_queue_depth";
/// Live events that did not reach Redis, or that came from Redis and were not handed to this
/// instance, by `reason` (`queue_full`, `failed`, `receive_queue_full`).
pub const LIVE_EVENTS_UNDELIVERED_TOTAL: &str = "live_events_undelivered_total";
/// Replies whose instance stopped before storing them, stored here (partial, marked
/// `incomplete`).
pub const REPLIES_RECOVERED_TOTAL: &str = "replies_recovered_total";
/// Connections closed as soon as accepted: their client address held `MAX_CONNECTIONS_PER_IP`
/// connections without an authenticated request.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "http_connections_refused_total";
/// Turns refused by a usage limit, by `limit` (`messages_per_minute`, `tokens_per_day`,
/// `tokens_per_month`).
pub const USAGE_REFUSALS_TOTAL: &str = "usage_refusals_total";
/// Usage-limit checks made on this instance's own counters because Redis did not answer.
pub const USAGE_LIMITS_LOCAL_TOTAL: &str = "usage_limits_local_total";
/// Gauge: 1 while the Redis of the live-chat hub answers, 0 while it does not (absent
/// without `REDIS_URL`).
pub const REDIS_UP: &str = "redis_up";

/// The `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets in seconds: from a cached read (ms) to a long LLM reply (minutes).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// How often buffered histogram samples are folded into their buckets, so memory stays
/// bounded even when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// A recorder configured like the process-wide one; tests use it with
/// [`metrics::with_local_recorder`] to observe calls in isolation.
pub fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .expect("the bucket list is not empty")
        .build_recorder()
}

/// Installs the Prometheus recorder as the process-wide `metrics` recorder, once, and returns
/// the handle that renders it. Later calls return the same handle.
///
/// If another recorder was installed first (by an embedding program), ours is not installed:
/// `/metrics` then renders only what is recorded while it is explicitly in scope, and a
/// warning says so.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        describe();
        let upkeep = handle.clone();
        // A plain thread, not a task: it must outlive any one Tokio runtime (tests start many).
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "could not start the metrics upkeep thread");
        }
        handle
    })
}

/// Registers help texts, and sets the gauges to zero so they are scraped before first use.
fn describe() {
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests answered");
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time to the response head"
    );
    describe_gauge!(WEBSOCKET_CONNECTIONS, "Open WebSocket connections");
    describe_gauge!(LLM_GENERATIONS_IN_FLIGHT, "LLM generations running now");
    describe_histogram!(
        LLM_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of LLM requests"
    );
    describe_counter!(LLM_TOKENS_TOTAL, "LLM tokens by model and kind");
    describe_counter!(USAGE_REFUSALS_TOTAL, "Turns refused by a usage limit");
    describe_counter!(
        USAGE_LIMITS_LOCAL_TOTAL,
        "Usage-limit checks made on local counters because Redis did not answer"
    );
    describe_counter!(LLM_ERRORS_TOTAL, "LLM failures by kind");
    describe_counter!(ANALYTICS_EVENTS_SENT_TOTAL, "Analytics events delivered");
    describe_counter!(
        ANALYTICS_EVENTS_FAILED_TOTAL,
        "Analytics events given up on after retries"
    );
    describe_counter!(
        ANALYTICS_EVENTS_DROPPED_TOTAL,
        "Analytics events never sent (queue full or shutdown deadline)"
    );
    describe_gauge!(
        ANALYTICS_QUEUE_DEPTH,
        "Analytics events waiting for delivery"
    );
    describe_gauge!(REDIS_UP, "Whether the live-chat hub's Redis answers");
    describe_counter!(
        LIVE_EVENTS_UNDELIVERED_TOTAL,
        "Live events that did not cross instances through Redis"
    );
    describe_counter!(
        REPLIES_RECOVERED_TOTAL,
        "Replies left unfinished by a stopped instance, stored partial"
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED_TOTAL,
        "Connections closed at once: too many without authentication from one address"
    );
    gauge!(WEBSOCKET_CONNECTIONS).increment(0.0);
    gauge!(LLM_GENERATIONS_IN_FLIGHT).increment(0.0);
    gauge!(ANALYTICS_QUEUE_DEPTH).increment(0.0);
    for limit in ["messages_per_minute", "tokens_per_day", "tokens_per_month"] {
        counter!(USAGE_REFUSALS_TOTAL, "limit" => limit).increment(0);
    }
    counter!(USAGE_LIMITS_LOCAL_TOTAL).increment(0);
    counter!(ANALYTICS_EVENTS_SENT_TOTAL).increment(0);
    counter!(ANALYTICS_EVENTS_FAILED_TOTAL).increment(0);
    counter!(HTTP_CONNECTIONS_REFUSED_TOTAL).increment(0);
}

/// The current metrics in the Prometheus text format.
pub fn render() -> String {
    install().render()
}

/// `GET /metrics`: the Prometheus text exposition, without authentication.
pub async fn endpoint() -> Response {
    // Rendering walks every series; off the async workers it cannot stall other requests.
    let body = tokio::task::spawn_blocking(render)
        .await
        .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}

/// The HTTP series' handles, made once per route, method and status. Making a handle
/// allocates and hashes its labels, which would otherwise be most of the cost of recording
/// a request. The set is small: routes are templates.
#[derive(Default)]
pub struct HttpSeries {
    by_route: RwLock<HashMap<String, RouteSeries>>,
}

struct RouteSeries {
    duration: Histogram,
    requests: Vec<(Method, u16, Counter)>,
}

impl HttpSeries {
    /// Observes one answered HTTP request.
    pub fn record(&self, method: &Method, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        {
            let by_route = self.by_route.read().unwrap_or_else(|e| e.into_inner());
            if let Some(series) = by_route.get(route) {
                if let Some((_, _, requests)) = series
                    .requests
                    .iter()
                    .find(|(m, s, _)| m == method && *s == status)
                {
                    requests.increment(1);
                    series.duration.record(seconds);
                    return;
                }
            }
        }
        let mut by_route = self.by_route.write().unwrap_or_else(|e| e.into_inner());
        let series = by_route
            .entry(route.to_owned())
            .or_insert_with(|| RouteSeries {
                duration: histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route.to_owned()),
                requests: Vec::new(),
            });
        let index = match series
            .requests
            .iter()
            .position(|(m, s, _)| m == method && *s == status)
        {
            Some(index) => index,
            None => {
                let requests = counter!(
                    HTTP_REQUESTS_TOTAL,
                    "method" => method.as_str().to_owned(),
                    "route" => route.to_owned(),
                    "status" => status.to_string()
                );
                series.requests.push((method.clone(), status, requests));
                series.requests.len() - 1
            }
        };
        series.requests[index].2.increment(1);
        series.duration.record(seconds);
    }
}

/// Holds a gauge up by one while alive; dropping it takes the one back, so an early return
/// or a panic cannot leave the gauge counting something that is gone.
#[must_use = "the gauge goes back down when this is dropped"]
#[derive(Debug)]
pub struct GaugeGuard {
    name: &'static str,
}

impl GaugeGuard {
    fn new(name: &'static str) -> Self {
        gauge!(name).increment(1.0);
        Self { name }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        gauge!(self.name).decrement(1.0);
    }
}

/// Counts an open WebSocket connection until the guard is dropped.
pub fn ws_connection_opened() -> GaugeGuard {
    GaugeGuard::new(WEBSOCKET_CONNECTIONS)
}

/// Counts a running LLM generation until the guard is dropped.
pub fn llm_generation_started() -> GaugeGuard {
    GaugeGuard::new(LLM_GENERATIONS_IN_FLIGHT)
}

/// Observes the duration of one LLM request.
pub fn llm_request(elapsed: Duration) {
    histogram!(LLM_REQUEST_DURATION_SECONDS).record(elapsed.as_secs_f64());
}

/// Kinds of LLM tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Tokens sent (history and prompt).
    Prompt,
    /// Tokens generated.
    Completion,
}

impl TokenKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::Completion => "completion",
        }
    }
}

/// Counts LLM tokens of one kind for a model (one of the few the service allows).
pub fn llm_tokens(model: &str, kind: TokenKind, tokens: u64) {
    counter!(LLM_TOKENS_TOTAL, "model" => model.to_owned(), "kind" => kind.as_str())
        .increment(tokens);
}

/// Counts a turn refused by a usage limit.
pub fn usage_refused(limit: &'static str) {
    counter!(USAGE_REFUSALS_TOTAL, "limit" => limit).increment(1);
}

/// Counts a usage-limit check made on local counters while Redis does not answer.
pub fn usage_limits_local() {
    counter!(USAGE_LIMITS_LOCAL_TOTAL).increment(1);
}

/// Counts an LLM failure; `kind` is a short fixed name such as `timeout`, `rate_limited`,
/// `server`, `connection` or `stopped`.
pub fn llm_error(kind: &'static str) {
    counter!(LLM_ERRORS_TOTAL, "kind" => kind).increment(1);
}

/// Counts a connection closed because its address held too many unauthenticated ones.
pub fn connection_refused() {
    counter!(HTTP_CONNECTIONS_REFUSED_TOTAL).increment(1);
}

/// Counts analytics events the analytics service accepted.
pub fn analytics_sent(events: u64) {
    counter!(ANALYTICS_EVENTS_SENT_TOTAL).increment(events);
}

/// Counts analytics events given up on after their retries.
pub fn analytics_failed(events: u64) {
    counter!(ANALYTICS_EVENTS_FAILED_TOTAL).increment(events);
}

/// Counts analytics events that were never sent; `reason` is `queue_full` or `shutdown`.
pub fn analytics_dropped(reason: &'static str, events: u64) {
    counter!(ANALYTICS_EVENTS_DROPPED_TOTAL, "reason" => reason).increment(events);
}

/// Counts live events that did not cross instances; `reason` is `queue_full` (the queue to
/// Redis was full), `failed` (Redis refused them, also when tried again) or
/// `receive_queue_full` (they came from Redis faster than this instance took them).
pub fn live_events_undelivered(reason: &'static str, events: u64) {
    counter!(LIVE_EVENTS_UNDELIVERED_TOTAL, "reason" => reason).increment(events);
}

/// Counts a reply left unfinished by a stopped instance and stored here.
pub fn reply_recovered() {
    counter!(REPLIES_RECOVERED_TOTAL).increment(1);
}

/// Records whether Redis answers.
pub fn redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

/// The analytics queue depth gauge, to be kept and moved by the queue's owner: looking a
/// gauge up costs more than moving it. A no-op before [`install`].
pub fn analytics_queue_depth() -> metrics::Gauge {
    gauge!(ANALYTICS_QUEUE_DEPTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_move_gauges_and_helpers_render_their_series() {
        let recorder = recorder();
        let handle = recorder.handle();
        let text = metrics::with_local_recorder(&recorder, || {
            let connection = ws_connection_opened();
            let generation = llm_generation_started();
            let _second = ws_connection_opened();
            drop(generation);
            drop(connection);
            llm_tokens("m-1", TokenKind::Completion, 7);
            llm_error("timeout");
            usage_refused("tokens_per_day");
            llm_request(Duration::from_millis(120));
            HttpSeries::default().record(
                &Method::GET,
                "/api/v1/users/{user_id}",
                200,
                Duration::from_millis(3),
            );
            handle.render()
        });
        assert!(text.contains("websocket_connections 1"), "{text}");
        assert!(text.contains("llm_generations_in_flight 0"), "{text}");
        assert!(
            text.contains("llm_tokens_total{model=\"m-1\",kind=\"completion\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("usage_refusals_total{limit=\"tokens_per_day\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("llm_errors_total{kind=\"timeout\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("llm_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains(
            "http_requests_total{method=\"GET\",route=\"/api/v1/users/{user_id}\",status=\"200\"} 1"
        ));
        assert!(
            text.contains("http_request_duration_seconds_bucket{route="),
            "{text}"
        );
    }
}
