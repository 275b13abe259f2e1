//! The delivery worker: drains the queue into the analytics service in batches, with a
//! bounded number of connections, a per-request timeout and a short retry.
//!
//! Over plain HTTP a batch goes down one keep-alive connection as pipelined requests (see
//! [`super::http1`]); over HTTPS, or with pipelining turned off, each event is a request of
//! the shared `reqwest` client, the requests of a batch running concurrently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{StatusCode, Url};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::event::{Event, Outgoing};
use super::http1::{After, Connection, Endpoint, ExchangeError, USER_AGENT};
use crate::ids::IdCodec;
use crate::jwt::JwtKeys;
use crate::metrics;

/// How events are delivered.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Limit of one batch's exchange, first byte written to last byte read. A stalled
    /// service holds a connection this long.
    pub request_timeout: Duration,
    /// Limit of establishing a connection.
    pub connect_timeout: Duration,
    /// Batches in flight at once, each on its own connection; further events wait in the
    /// queue (and gather into larger batches).
    pub concurrency: usize,
    /// Most events in one batch: requests written back to back on one connection before
    /// their answers are read. 1 turns pipelining off: events then go through the HTTP
    /// client, [`CLIENT_BATCH`] at a time per batch.
    pub pipeline_depth: usize,
    /// How long a batch that is not full waits for more events before it is sent.
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
            concurrency: 4,
            pipeline_depth: 32,
            linger: Duration::from_millis(1),
            max_attempts: 3,
            retry_base_delay: Duration::from_millis(200),
        }
    }
}

/// Events of one batch sent through the HTTP client (HTTPS, or pipelining off), each its own
/// concurrent request.
pub const CLIENT_BATCH: usize = 16;

/// Why one delivery attempt of an event failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The service answered with a non-success status.
    #[error("the analytics service answered {0}")]
    Status(StatusCode),
    /// No connection could be opened.
    #[error("could not connect to the analytics service: {0}")]
    Connect(std::io::ErrorKind),
    /// The connection broke before the answer arrived.
    #[error("the connection to the analytics service was lost: {0}")]
    Lost(std::io::ErrorKind),
    /// The answer could not be read.
    #[error("the analytics service sent a malformed response: {0}")]
    Malformed(&'static str),
    /// No answer within the request timeout.
    #[error("the analytics service did not answer in time")]
    TimedOut,
    /// The HTTPS client failed.
    #[error("could not reach the analytics service: {0}")]
    Client(#[source] Arc<reqwest::Error>),
}

impl DeliveryError {
    /// Whether another attempt may succeed: 5xx, 429, refused or lost connections.
    /// Timeouts are not retried: a stalled service should not get more of the load that
    /// stalls it.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status(status) => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::Connect(_) | Self::Lost(_) => true,
            Self::Malformed(_) | Self::TimedOut => false,
            Self::Client(err) => err.is_connect(),
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

/// How requests reach the service.
enum Transport {
    /// Plain HTTP: pipelined keep-alive connections.
    Pipelined(Pipeline),
    /// HTTPS: one request per event through the shared client, which does the TLS.
    Client(reqwest::Client),
}

/// The service's endpoint and the connections to it that wait for the next batch.
struct Pipeline {
    endpoint: Endpoint,
    idle: Mutex<Vec<Connection>>,
}

impl Pipeline {
    /// An idle connection (and `true`: it may have been closed by the service since), or a
    /// new one.
    async fn connection(&self, timeout: Duration) -> Result<(Connection, bool), DeliveryError> {
        if let Some(idle) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok((idle, true));
        }
        match tokio::time::timeout(timeout, self.endpoint.connect()).await {
            Ok(Ok(connection)) => Ok((connection, false)),
            Ok(Err(err)) => Err(DeliveryError::Connect(err.kind())),
            Err(_) => Err(DeliveryError::Connect(std::io::ErrorKind::TimedOut)),
        }
    }

    /// Keeps a connection for the next batch.
    fn keep(&self, connection: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(connection);
    }
}

/// Sends batches of events; shared by the delivery tasks.
pub(crate) struct Deliverer {
    transport: Transport,
    base: Url,
    /// Scheme, host and port of `base`, which requests' targets follow.
    origin: String,
    ids: Arc<IdCodec>,
    jwt: Arc<JwtKeys>,
    options: DeliveryOptions,
    counters: Arc<Counters>,
    /// Which outcomes are worth a warning or an info line.
    health: Mutex<HealthLog>,
}

impl Deliverer {
    /// Sets up the transport for `base`: pipelined connections for `http` (unless the depth
    /// is 1), the HTTP client otherwise.
    pub(crate) fn new(
        base: Url,
        ids: Arc<IdCodec>,
        jwt: Arc<JwtKeys>,
        options: DeliveryOptions,
        counters: Arc<Counters>,
    ) -> Result<Self, reqwest::Error> {
        let pipelined = Endpoint::from_url(&base).filter(|_| options.pipeline_depth > 1);
        let transport = match pipelined {
            Some(endpoint) => Transport::Pipelined(Pipeline {
                endpoint,
                idle: Mutex::new(Vec::new()),
            }),
            None => Transport::Client(
                reqwest::Client::builder()
                    .timeout(options.request_timeout)
                    .connect_timeout(options.connect_timeout)
                    .pool_max_idle_per_host(options.concurrency * CLIENT_BATCH)
                    .user_agent(USER_AGENT)
                    .build()?,
            ),
        };
        Ok(Self {
            transport,
            origin: base.origin().ascii_serialization(),
            base,
            ids,
            jwt,
            options,
            counters,
            health: Mutex::new(HealthLog::default()),
        })
    }

    /// Delivers a batch with retries of the events that may succeed later, and counts the
    /// outcomes.
    async fn deliver(&self, events: Vec<Event>) {
        let mut pending: Vec<Outgoing> = events
            .iter()
            .map(|event| event.to_request(&self.base, &self.ids))
            .collect();
        let mut attempt = 1;
        while !pending.is_empty() {
            let results = self.send(&pending).await;
            let mut retry = Vec::new();
            let mut sent = 0;
            for (request, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(()) => sent += 1,
                    Err(err) if err.is_retryable() && attempt < self.options.max_attempts => {
                        retry.push(request);
                    }
                    Err(err) => self.failed(&err),
                }
            }
            self.succeeded(sent);
            pending = retry;
            if !pending.is_empty() {
                tokio::time::sleep(self.backoff(attempt)).await;
                attempt += 1;
            }
        }
    }

    fn succeeded(&self, count: u64) {
        if count == 0 {
            return;
        }
        self.counters.settle(count);
        self.counters.sent.fetch_add(count, Ordering::Relaxed);
        metrics::analytics_sent(count);
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

    /// Most events worth sending as one batch on this transport.
    fn batch_size(&self) -> usize {
        match self.transport {
            Transport::Pipelined(_) => self.options.pipeline_depth.max(1),
            Transport::Client(_) => CLIENT_BATCH,
        }
    }

    /// One attempt at every request, with one result per request in order.
    async fn send(&self, requests: &[Outgoing]) -> Vec<Result<(), DeliveryError>> {
        match &self.transport {
            Transport::Pipelined(pipeline) => self.send_pipelined(pipeline, requests).await,
            Transport::Client(client) => {
                futures::future::join_all(requests.iter().map(|r| self.send_one(client, r))).await
            }
        }
    }

    /// A token for the requests that need the service's own credential. Minted per batch
    /// and short-lived, so no long-lived credential sits in memory.
    fn service_token(&self) -> String {
        self.jwt.mint(
            "chat-service",
            &["admin".to_owned()],
            Duration::from_secs(300),
            None,
        )
    }

    /// Sends the requests in chunks of the pipeline depth, each written at once on one
    /// connection; requests the service did not take (it closed the connection first) go
    /// out again on a new one.
    async fn send_pipelined(
        &self,
        pipeline: &Pipeline,
        requests: &[Outgoing],
    ) -> Vec<Result<(), DeliveryError>> {
        let token = requests
            .iter()
            .any(|r| r.needs_token)
            .then(|| self.service_token());
        let depth = self.options.pipeline_depth.max(1);
        let mut results = Vec::with_capacity(requests.len());
        let mut wire = Vec::new();
        let mut statuses = Vec::new();
        while results.len() < requests.len() {
            let rest = &requests[results.len()..];
            let (mut connection, reused) =
                match pipeline.connection(self.options.connect_timeout).await {
                    Ok(found) => found,
                    Err(err) => {
                        results.extend(rest.iter().map(|_| Err(err.clone())));
                        break;
                    }
                };
            let chunk = &rest[..rest.len().min(depth)];
            wire.clear();
            for request in chunk {
                let token = token.as_deref().filter(|_| request.needs_token);
                pipeline.endpoint.encode(&mut wire, request, token);
            }
            statuses.clear();
            let exchange = connection.exchange(&wire, chunk.len(), &mut statuses);
            let outcome = tokio::time::timeout(self.options.request_timeout, exchange).await;
            results.extend(
                chunk
                    .iter()
                    .zip(&statuses)
                    .map(|(request, &status)| judge(request, status)),
            );
            let failure = match outcome {
                Ok(Ok(After::Reusable)) => {
                    pipeline.keep(connection);
                    None
                }
                // The service closed the connection after some answers: it did not take the
                // rest, which go out again on a new connection.
                Ok(Ok(After::Closed)) if !statuses.is_empty() => None,
                // An idle connection the service had closed in the meantime: try a new one.
                Ok(Ok(After::Closed)) | Ok(Err(ExchangeError::Lost(_)))
                    if reused && statuses.is_empty() =>
                {
                    None
                }
                Ok(Ok(After::Closed)) => {
                    Some(DeliveryError::Lost(std::io::ErrorKind::UnexpectedEof))
                }
                Ok(Err(ExchangeError::Lost(err))) => Some(DeliveryError::Lost(err.kind())),
                Ok(Err(ExchangeError::Malformed(what))) => Some(DeliveryError::Malformed(what)),
                Err(_) => Some(DeliveryError::TimedOut),
            };
            if let Some(failure) = failure {
                let unanswered = chunk.len() - statuses.len();
                results.extend((0..unanswered).map(|_| Err(failure.clone())));
            }
        }
        results
    }

    async fn send_one(
        &self,
        client: &reqwest::Client,
        request: &Outgoing,
    ) -> Result<(), DeliveryError> {
        let url = format!("{}{}", self.origin, request.target);
        let mut builder = client.request(request.method.clone(), url);
        if let Some(body) = &request.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        if request.needs_token {
            builder = builder.bearer_auth(self.service_token());
        }
        let response = builder.send().await.map_err(|err| {
            if err.is_timeout() {
                DeliveryError::TimedOut
            } else {
                DeliveryError::Client(Arc::new(err))
            }
        })?;
        judge(request, response.status().as_u16())
    }
}

/// Whether an answer means the event was taken.
fn judge(request: &Outgoing, status: u16) -> Result<(), DeliveryError> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    // A deletion of a user the service never heard of is not a failure.
    if status.is_success() || (request.needs_token && status == StatusCode::NOT_FOUND) {
        Ok(())
    } else {
        Err(DeliveryError::Status(status))
    }
}

/// Runs until the queue is closed and drained. Whenever a delivery slot is free it takes
/// the events waiting (at most a batch; a batch that is not full gets `linger` to fill), so
/// at most `concurrency` batches are in flight and, under load, batches grow instead of
/// requests multiplying. After `closing` is cancelled no new event is accepted and the
/// queued ones are delivered.
pub(crate) async fn run(
    mut queue: mpsc::Receiver<Event>,
    deliverer: Arc<Deliverer>,
    closing: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(deliverer.options.concurrency.max(1)));
    let batch_size = deliverer.batch_size();
    let linger = deliverer.options.linger;
    // Dropping the set (when the worker is aborted at the shutdown deadline) cancels the
    // deliveries in flight.
    let mut deliveries = JoinSet::new();
    let mut closed = false;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = Vec::with_capacity(batch_size);
        tokio::select! {
            received = queue.recv_many(&mut batch, batch_size) => if received == 0 {
                break;
            },
            () = closing.cancelled(), if !closed => {
                closed = true;
                queue.close();
                continue;
            }
        }
        if batch.len() < batch_size && !linger.is_zero() && !closed {
            tokio::time::sleep(linger).await;
            while batch.len() < batch_size {
                let Ok(event) = queue.try_recv() else { break };
                batch.push(event);
            }
        }
        let deliverer = deliverer.clone();
        deliveries.spawn(async move {
            deliverer.deliver(batch).await;
            drop(slot);
        });
        while deliveries.try_join_next().is_some() {}
    }
    while deliveries.join_next().await.is_some() {}
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
