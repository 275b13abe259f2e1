//! Analytics: events about requests, conversations, messages and users, delivered to the
//! platform's analytics service from a bounded background queue.
//!
//! Recording an event never waits: [`Analytics::track`] pushes into the queue or, when it is
//! full, drops the event and counts it. A worker task delivers (see [`worker`]); a slow or
//! dead analytics service only fills the queue. Without `ANALYTICS_SERVICE_URL` delivery is
//! off: no queue and no worker exist, events are discarded at once and counted nowhere (there
//! is nothing to lose). Paths and bodies are described in [`event`].

pub mod event;
pub mod layer;
pub mod transport;
pub mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::Settings;
use crate::db::{Conversation, Message, User};
use crate::ids::IdCodec;
use crate::jwt::JwtKeys;
use crate::metrics;

pub use event::{
    ConversationAction, ConversationEvent, Event, MessageEvent, UserDeleted, UserProfile,
};
pub use layer::{AnalyticsLayer, CallerSlot};
pub use worker::DeliveryOptions;

use transport::{Endpoint, EndpointError};
use worker::{Counters, Deliverer};

/// Why analytics could not start.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    /// `ANALYTICS_SERVICE_URL` is not an absolute `http(s)` URL.
    #[error("ANALYTICS_SERVICE_URL={url:?} is not an http(s) URL")]
    InvalidUrl {
        /// The configured value.
        url: String,
    },
    /// The TLS client for an `https` URL could not be set up.
    #[error("could not set up TLS for the analytics service")]
    Tls(#[source] EndpointError),
}

/// What a handle has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnalyticsStats {
    /// Events accepted into the queue.
    pub accepted: u64,
    /// Events the analytics service accepted.
    pub sent: u64,
    /// Events given up on after their retries.
    pub failed: u64,
    /// Events never sent: queue full, or still pending at the shutdown deadline.
    pub dropped: u64,
    /// Events accepted and not yet sent, failed or dropped.
    pub pending: u64,
}

/// The handle every part of the service records events through; cheap to clone.
#[derive(Clone, Default)]
pub struct Analytics {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    closing: CancellationToken,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytics")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

impl Analytics {
    /// A handle that discards every event.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Delivery per the settings: off without `ANALYTICS_SERVICE_URL`, otherwise a queue of
    /// `analytics_queue_capacity` events and a worker with the default delivery options.
    /// Must be called within a Tokio runtime.
    pub fn from_settings(
        settings: &Settings,
        ids: Arc<IdCodec>,
        jwt: Arc<JwtKeys>,
    ) -> Result<Self, AnalyticsError> {
        match &settings.analytics_service_url {
            None => Ok(Self::disabled()),
            Some(url) => Self::start(
                url,
                settings.analytics_queue_capacity,
                DeliveryOptions::default(),
                ids,
                jwt,
            ),
        }
    }

    /// Starts a worker delivering to the service at `url` from a queue of `capacity` events.
    /// Must be called within a Tokio runtime.
    pub fn start(
        url: &str,
        capacity: usize,
        options: DeliveryOptions,
        ids: Arc<IdCodec>,
        jwt: Arc<JwtKeys>,
    ) -> Result<Self, AnalyticsError> {
        let invalid = || AnalyticsError::InvalidUrl {
            url: url.to_owned(),
        };
        let base = Url::parse(url).map_err(|_| invalid())?;
        let endpoint = Endpoint::from_url(&base).map_err(|err| match err {
            EndpointError::Unsupported => invalid(),
            EndpointError::Tls(_) => AnalyticsError::Tls(err),
        })?;
        let counters = Arc::new(Counters::new());
        let deliverer = Deliverer::new(endpoint, base, ids, jwt, options, counters.clone());
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let closing = CancellationToken::new();
        let worker = tokio::spawn(worker::run(receiver, Arc::new(deliverer), closing.clone()));
        Ok(Self {
            inner: Some(Arc::new(Inner {
                queue,
                counters,
                closing,
                worker: Mutex::new(Some(worker)),
            })),
        })
    }

    /// Whether events are delivered anywhere.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues an event without waiting; a full queue drops it and counts the drop.
    pub fn track(&self, event: Event) {
        let Some(inner) = &self.inner else {
            return;
        };
        // Counted before the send so the worker's decrement can never come first.
        inner.counters.queued();
        match inner.queue.try_send(event) {
            Ok(()) => {
                inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                inner.counters.settle(1);
                inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
                let reason = match err {
                    TrySendError::Full(_) => "queue_full",
                    TrySendError::Closed(_) => "shutdown",
                };
                metrics::analytics_dropped(reason, 1);
            }
        }
    }

    /// Records a new conversation.
    pub fn conversation_created(&self, conversation: &Conversation) {
        self.conversation(ConversationAction::Created, conversation);
    }

    /// Records a conversation that has just ended (not one that was already ended).
    pub fn conversation_ended(&self, conversation: &Conversation) {
        self.conversation(ConversationAction::Ended, conversation);
    }

    /// Records a deleted conversation (the row as it was before the deletion).
    pub fn conversation_deleted(&self, conversation: &Conversation) {
        self.conversation(ConversationAction::Deleted, conversation);
    }

    fn conversation(&self, action: ConversationAction, conversation: &Conversation) {
        if self.is_enabled() {
            self.track(Event::Conversation(ConversationEvent::new(
                action,
                conversation,
            )));
        }
    }

    /// Records a stored message on behalf of `user_id`: the conversation's owner in chat,
    /// the caller over REST, `None` in anonymous conversations.
    pub fn message(&self, message: &Message, user_id: Option<i64>) {
        if self.is_enabled() {
            self.track(Event::Message(MessageEvent::new(message, user_id)));
        }
    }

    /// Records a user provisioned from a token with these roles.
    pub fn user_synced(&self, user: &User, roles: &[String]) {
        if self.is_enabled() {
            self.track(Event::UserSynced(UserProfile {
                user_id: user.id,
                username: user.username.clone(),
                email: user.email.clone(),
                roles: roles.to_vec(),
                at: chrono::Utc::now(),
            }));
        }
    }

    /// Records a deleted user, so the analytics service deletes their data too.
    pub fn user_deleted(&self, user: &User) {
        if self.is_enabled() {
            self.track(Event::UserDeleted(UserDeleted::new(user)));
        }
    }

    /// What this handle has done so far; zeros when delivery is off.
    pub fn stats(&self) -> AnalyticsStats {
        let Some(inner) = &self.inner else {
            return AnalyticsStats::default();
        };
        let c = &inner.counters;
        AnalyticsStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Acquire),
        }
    }

    /// Stops accepting events and delivers the queued ones, for at most `deadline`. Events
    /// still pending then are dropped and counted. Returns whether everything was flushed.
    /// Later calls return at once.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        inner.closing.cancel();
        let worker = inner
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut worker) = worker else {
            return true;
        };
        if tokio::time::timeout(deadline, &mut worker).await.is_ok() {
            tracing::debug!("analytics queue flushed");
            return true;
        }
        worker.abort();
        let _ = worker.await;
        let lost = inner.counters.pending.load(Ordering::Acquire);
        inner.counters.settle(lost);
        inner.counters.dropped.fetch_add(lost, Ordering::Relaxed);
        metrics::analytics_dropped("shutdown", lost);
        tracing::warn!(
            events = lost,
            "analytics events were still pending at the shutdown deadline and were dropped"
        );
        false
    }
}
