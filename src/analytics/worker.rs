//! The delivery worker: drains the queue into the analytics service with one shared HTTP
//! client, a bounded number of requests in flight, a per-request timeout and a short retry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::{StatusCode, Url};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::event::{Event, Outgoing};
use crate::auth::JwtKeys;
use crate::ids::IdCodec;
use crate::metrics;

/// How events are delivered.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Limit of one request, connect to last byte. A stalled service holds a slot this long.
    pub request_timeout: Duration,
    /// Limit of establishing a connection.
    pub connect_timeout: Duration,
    /// Requests in flight at once; further events wait in the queue.
    pub concurrency: usize,
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
            concurrency: 16,
            max_attempts: 3,
            retry_base_delay: Duration::from_millis(200),
        }
    }
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The service answered with a non-success status.
    #[error("the analytics service answered {0}")]
    Status(StatusCode),
    /// The request could not be sent or timed out.
    #[error("could not reach the analytics service: {0}")]
    Transport(#[source] reqwest::Error),
}

impl DeliveryError {
    /// Whether another attempt may succeed: 5xx, 429 and refused connections. Timeouts are
    /// not retried: a stalled service should not get more of the load that stalls it.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status(status) => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::Transport(err) => err.is_connect(),
        }
    }
}

/// Counters of one analytics handle, shared with its worker.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// Accepted and not yet sent, failed or dropped.
    pub(crate) pending: AtomicU64,
}

impl Counters {
    /// Takes `n` events off `pending`, never below zero (an aborted delivery may race the
    /// shutdown's final count).
    pub(crate) fn settle(&self, n: u64) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            });
        metrics::analytics_queue_depth_changed(-(n as f64));
    }
}

/// Sends events; shared by the delivery tasks.
pub(crate) struct Deliverer {
    client: reqwest::Client,
    base: Url,
    ids: Arc<IdCodec>,
    jwt: Arc<JwtKeys>,
    options: DeliveryOptions,
    counters: Arc<Counters>,
    /// Whether the last delivery succeeded; failures are logged loudly only on a change.
    healthy: AtomicBool,
}

impl Deliverer {
    /// Builds the one HTTP client of the worker.
    pub(crate) fn new(
        base: Url,
        ids: Arc<IdCodec>,
        jwt: Arc<JwtKeys>,
        options: DeliveryOptions,
        counters: Arc<Counters>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.connect_timeout)
            .pool_max_idle_per_host(options.concurrency)
            .user_agent(concat!("chat-service/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            base,
            ids,
            jwt,
            options,
            counters,
            healthy: AtomicBool::new(true),
        })
    }

    /// Delivers one event with retries and counts the outcome.
    async fn deliver(&self, event: Event) {
        let request = event.to_request(&self.base, &self.ids);
        let result = self.send_with_retries(&request).await;
        self.counters.settle(1);
        match result {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                metrics::analytics_sent(1);
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("analytics delivery recovered");
                }
            }
            Err(err) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                metrics::analytics_failed(1);
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %err, "analytics delivery is failing; events are counted and dropped");
                } else {
                    tracing::debug!(error = %err, kind = event.kind(), "analytics event not delivered");
                }
            }
        }
    }

    async fn send_with_retries(&self, request: &Outgoing) -> Result<(), DeliveryError> {
        let mut attempt = 1;
        loop {
            match self.send(request).await {
                Ok(()) => return Ok(()),
                Err(err) if err.is_retryable() && attempt < self.options.max_attempts => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.options.retry_base_delay;
        let exponential = base.saturating_mul(1 << (attempt - 1).min(10));
        let jitter_ms = rand::rng().random_range(0..=base.as_millis().max(1) as u64 / 2);
        exponential + Duration::from_millis(jitter_ms)
    }

    async fn send(&self, request: &Outgoing) -> Result<(), DeliveryError> {
        let mut builder = self
            .client
            .request(request.method.clone(), request.url.clone());
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        if request.needs_token {
            // Minted per request and short-lived, so no long-lived credential sits in memory.
            let token = self.jwt.mint(
                "chat-service",
                &["admin".to_owned()],
                Duration::from_secs(300),
                None,
            );
            builder = builder.bearer_auth(token);
        }
        let response = builder.send().await.map_err(DeliveryError::Transport)?;
        let status = response.status();
        // A deletion of a user the service never heard of is not a failure.
        if status.is_success() || (request.needs_token && status == StatusCode::NOT_FOUND) {
            Ok(())
        } else {
            Err(DeliveryError::Status(status))
        }
    }
}

/// Runs until the queue is closed and drained: takes an event whenever a delivery slot is
/// free, so at most `concurrency` requests are in flight and the rest wait in the queue.
/// After `closing` is cancelled no new event is accepted and the queued ones are delivered.
pub(crate) async fn run(
    mut queue: mpsc::Receiver<Event>,
    deliverer: Arc<Deliverer>,
    closing: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(deliverer.options.concurrency.max(1)));
    // Dropping the set (when the worker is aborted at the shutdown deadline) cancels the
    // deliveries in flight.
    let mut deliveries = JoinSet::new();
    let mut closed = false;
    loop {
        let event = tokio::select! {
            event = queue.recv() => match event {
                Some(event) => event,
                None => break,
            },
            () = closing.cancelled(), if !closed => {
                closed = true;
                queue.close();
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let deliverer = deliverer.clone();
        deliveries.spawn(async move {
            deliverer.deliver(event).await;
            drop(slot);
        });
        while deliveries.try_join_next().is_some() {}
    }
    while deliveries.join_next().await.is_some() {}
}
