//! The delivery worker: takes events from the queue and delivers each as one request on a
//! kept-alive connection of a pool (see [`super::transport`]), with a bounded number in
//! flight, a per-request timeout and a short retry.
//!
//! A connection carries one request at a time (hyper's client does not pipeline), so the
//! pool is as large as the number of events in flight, which has to cover the events that
//! arrive during one round trip under load: `concurrency` bounds it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use hyper::StatusCode;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::event::{Event, Outgoing};
use super::transport::{Connection, Endpoint, ExchangeError};
use crate::ids::IdCodec;
use crate::jwt::JwtKeys;
use crate::metrics;

/// How events are delivered.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Limit of one request, first byte written to last byte of the answer read. A stalled
    /// service holds a connection this long.
    pub request_timeout: Duration,
    /// Limit of establishing a connection.
    pub connect_timeout: Duration,
    /// Connections to the service, each carrying one request at a time; further events
    /// wait in the queue.
    pub concurrency: usize,
    /// How long the first event of a burst waits for more before they are all sent:
    /// requests that reach the service together cost both sides fewer wake-ups than the
    /// same requests one by one.
    pub linger: Duration,
    /// Attempts per event, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled on each retry, with jitter.
    pub retry_base_delay: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            concurrency: 64,
            linger: Duration::from_millis(5),
            max_attempts: 3,
            retry_base_delay: Duration::from_millis(200),
        }
    }
}

/// Why one delivery attempt of an event failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The service answered with a non-success status.
    #[error("the analytics service answered {0}")]
    Status(StatusCode),
    /// No connection could be opened.
    #[error("could not connect to the analytics service: {0}")]
    Connect(std::io::ErrorKind),
    /// The exchange failed: the connection broke, or the answer was unreadable or too large.
    #[error("the exchange with the analytics service failed: {0}")]
    Exchange(#[source] ExchangeError),
    /// No answer within the request timeout.
    #[error("the analytics service did not answer in time")]
    TimedOut,
}

impl DeliveryError {
    /// Whether another attempt may succeed: 5xx, 429, refused or lost connections.
    /// Timeouts are not retried: a stalled service should not get more of the load that
    /// stalls it; nor are unreadable answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status(status) => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::Connect(_) => true,
            Self::Exchange(err) => matches!(err, ExchangeError::Closed(_) | ExchangeError::Lost(_)),
            Self::TimedOut => false,
        }
    }
}

/// Counters of one analytics handle, shared with its worker.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// Accepted and not yet sent, failed or dropped.
    pub(crate) pending: AtomicU64,
    /// The Prometheus gauge that follows `pending`.
    depth: ::metrics::Gauge,
}

impl Counters {
    /// Zero counters, with the queue depth gauge of the installed metrics recorder.
    pub(crate) fn new() -> Self {
        Self {
            accepted: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            depth: metrics::analytics_queue_depth(),
        }
    }

    /// Counts an accepted event as pending.
    pub(crate) fn queued(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.depth.increment(1.0);
    }

    /// Takes `n` events off `pending`, never below zero (an aborted delivery may race the
    /// shutdown's final count).
    pub(crate) fn settle(&self, n: u64) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            });
        self.depth.decrement(n as f64);
    }
}

/// Decides which delivery outcomes deserve a warning or an info line: the start of a
/// failing spell, at most once per [`HealthLog::QUIET`], and the recovery that ends a spell
/// that was warned about. A receiver that refuses one kind of event among many accepted ones
/// would otherwise flip the state, and log twice, for every refusal.
#[derive(Debug, Default)]
struct HealthLog {
    failing: bool,
    warned: bool,
    last_warning: Option<Instant>,
}

impl HealthLog {
    /// Least time between two "failing" warnings.
    const QUIET: Duration = Duration::from_secs(60);

    /// Records a failure at `now`; true when it deserves a warning.
    fn failing(&mut self, now: Instant) -> bool {
        let starts_a_spell = !self.failing;
        self.failing = true;
        let quiet = self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= Self::QUIET);
        if starts_a_spell && quiet {
            self.warned = true;
            self.last_warning = Some(now);
            return true;
        }
        false
    }

    /// Records a success; true when it ends a spell that was warned about.
    fn recovered(&mut self) -> bool {
        let ends_a_warned_spell = self.failing && self.warned;
        self.failing = false;
        self.warned = false;
        ends_a_warned_spell
    }
}

/// Delivers events; shared by the deliveries in flight.
pub(crate) struct Deliverer {
    endpoint: Endpoint,
    base: Url,
    ids: Arc<IdCodec>,
    jwt: Arc<JwtKeys>,
    options: DeliveryOptions,
    counters: Arc<Counters>,
    /// Which outcomes are worth a warning or an info line.
    health: Mutex<HealthLog>,
}

impl Deliverer {
    /// Delivers to the service at `base`, reached through `endpoint`.
    pub(crate) fn new(
        endpoint: Endpoint,
        base: Url,
        ids: Arc<IdCodec>,
        jwt: Arc<JwtKeys>,
        options: DeliveryOptions,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            endpoint,
            base,
            ids,
            jwt,
            options,
            counters,
            health: Mutex::new(HealthLog::default()),
        }
    }

    /// Delivers an event on `connection` (opening one when there is none), retries it
    /// while it may succeed later, and counts the outcome. Returns the connection when it
    /// can carry the next event.
    async fn deliver(
        self: Arc<Self>,
        mut connection: Option<Connection>,
        event: Event,
    ) -> Option<Connection> {
        let request = event.to_request(&self.base, &self.ids);
        let mut attempt = 1;
        loop {
            let exchange = self.attempt(&mut connection, &request);
            let result = tokio::time::timeout(self.options.request_timeout, exchange)
                .await
                .unwrap_or(Err(DeliveryError::TimedOut));
            match result {
                Ok(()) => {
                    self.succeeded();
                    return connection;
                }
                Err(err) => {
                    // Whatever went wrong, the next attempt starts on a new connection.
                    connection = None;
                    if !err.is_retryable() || attempt >= self.options.max_attempts {
                        self.failed(&err);
                        return None;
                    }
                }
            }
            tokio::time::sleep(self.backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// One attempt: on the kept connection if there is one, else on a new one, which
    /// stays for the next event. A kept connection that the service closed since its last
    /// answer is replaced without counting an attempt.
    async fn attempt(
        &self,
        connection: &mut Option<Connection>,
        request: &Outgoing,
    ) -> Result<(), DeliveryError> {
        let token = request.needs_token.then(|| self.service_token());
        let token = token.as_deref();
        if let Some(kept) = connection {
            match self.endpoint.exchange(kept, request, token).await {
                Ok(status) => return judge(request, status),
                Err(ExchangeError::Closed(_)) => {}
                Err(err) => return Err(DeliveryError::Exchange(err)),
            }
        }
        let fresh = connection.insert(
            self.endpoint
                .connect(self.options.connect_timeout)
                .await
                .map_err(|err| DeliveryError::Connect(err.kind()))?,
        );
        let status = self
            .endpoint
            .exchange(fresh, request, token)
            .await
            .map_err(DeliveryError::Exchange)?;
        judge(request, status)
    }

    fn succeeded(&self) {
        self.counters.settle(1);
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        metrics::analytics_sent(1);
        if self.health_log().recovered() {
            tracing::info!("analytics delivery recovered");
        }
    }

    fn health_log(&self) -> std::sync::MutexGuard<'_, HealthLog> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self, err: &DeliveryError) {
        self.counters.settle(1);
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        metrics::analytics_failed(1);
        if self.health_log().failing(Instant::now()) {
            tracing::warn!(error = %err, "analytics delivery is failing; events are counted and dropped");
        } else {
            tracing::debug!(error = %err, "analytics event not delivered");
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.options.retry_base_delay;
        let exponential = base.saturating_mul(1 << (attempt - 1).min(10));
        let jitter_ms = rand::rng().random_range(0..=base.as_millis().max(1) as u64 / 2);
        exponential + Duration::from_millis(jitter_ms)
    }

    /// A token for the requests that need the service's own credential, minted per
    /// request and short-lived, so no long-lived credential sits in memory.
    fn service_token(&self) -> String {
        self.jwt.mint(
            "chat-service",
            &["admin".to_owned()],
            Duration::from_secs(300),
            None,
        )
    }
}

/// Whether an answer means the event was taken.
fn judge(request: &Outgoing, status: StatusCode) -> Result<(), DeliveryError> {
    // A deletion of a user the service never heard of is not a failure.
    if status.is_success() || (request.needs_token && status == StatusCode::NOT_FOUND) {
        Ok(())
    } else {
        Err(DeliveryError::Status(status))
    }
}

/// Runs until the queue is closed and drained. Each event is delivered on a connection of
/// its own while it is in flight: the most recently used idle one, or a new one. At most
/// `concurrency` events are in flight, so at most that many connections are open; further
/// events wait in the queue. After `closing` is cancelled no new event is accepted and the
/// queued ones are delivered.
pub(crate) async fn run(
    mut queue: mpsc::Receiver<Event>,
    deliverer: Arc<Deliverer>,
    closing: CancellationToken,
) {
    let limit = deliverer.options.concurrency.max(1);
    let linger = deliverer.options.linger;
    let mut idle: Vec<Connection> = Vec::with_capacity(limit);
    // Dropping the deliveries (when the worker is aborted at the shutdown deadline) cancels
    // them.
    let mut in_flight = FuturesUnordered::new();
    let mut events = Vec::with_capacity(limit);
    let mut closed = false;
    loop {
        let room = limit - in_flight.len();
        tokio::select! {
            biased;
            Some(connection) = in_flight.next(), if room < limit => {
                idle.extend(connection);
            }
            received = queue.recv_many(&mut events, room), if room > 0 => {
                if received == 0 {
                    break;
                }
                if events.len() < room && !linger.is_zero() && !closed {
                    tokio::time::sleep(linger).await;
                    while events.len() < room {
                        let Ok(event) = queue.try_recv() else { break };
                        events.push(event);
                    }
                }
                for event in events.drain(..) {
                    // Idle connections the service has closed since are dropped.
                    let connection = std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed());
                    in_flight.push(deliverer.clone().deliver(connection, event));
                }
            }
            () = closing.cancelled(), if !closed => {
                closed = true;
                queue.close();
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flapping_service_is_warned_about_once_a_minute_and_recoveries_pair_with_warnings() {
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let mut log = HealthLog::default();
        assert!(!log.recovered(), "healthy from the start: nothing to say");
        assert!(log.failing(at(0)), "the first failure warns");
        assert!(!log.failing(at(1)), "the same spell goes on");
        assert!(log.recovered(), "the warned spell ends");
        // Failures and successes alternating: quiet until a minute has passed.
        for second in 2..60 {
            assert!(!log.failing(at(second)));
            assert!(!log.recovered());
        }
        assert!(log.failing(at(60)));
        assert!(log.recovered());
    }
}
