//! Finishing the record of replies whose instance stopped before storing them.
//!
//! A turn records its reply as pending in the write that stores the user's message, and
//! forgets it in the write that stores the reply. A record left behind belongs to an instance
//! that stopped (killed, crashed, or cut off from Redis for longer than its lease). With
//! Redis, every instance sweeps the pending records now and then and takes over the
//! conversation of a reply whose instance stopped renewing its lease; without Redis, the one
//! instance finishes every record it finds when it starts. Finishing stores what is kept of
//! the reply's events (its chunks, possibly none) marked `incomplete`, frees the
//! conversation and publishes the reply's end (a failure naming the stored message) to
//! resumers and followers. The pending record is removed by the write that stores the reply,
//! whoever makes it, so a reply is stored once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::analytics::Analytics;
use crate::chat::events::{Exchange, Failure, GenerationId, LiveEvent, TurnKind};
use crate::chat::hub::{GenerationOwner, Hub};
use crate::db::{
    Message, MessageRole, NewMessage, PendingCursor, PendingReply, Scope, Store, StoreResult,
};
use crate::metrics;

/// Pending records looked at in one sweep at most.
const SWEEP_BATCH: i64 = 32;

/// The error stored with a reply whose instance stopped while others went on.
pub const INSTANCE_STOPPED: &str = "The reply was cut short: the instance generating it stopped";
/// The error stored with a reply that a restart of the (only) instance cut short.
pub const SERVICE_RESTARTED: &str = "The reply was cut short: the service restarted";

/// Finishes the records of replies left by stopped instances.
#[derive(Clone)]
pub struct Recovery {
    store: Arc<dyn Store>,
    hub: Hub,
    analytics: Analytics,
    lease: Duration,
}

impl Recovery {
    /// Recovery over these parts; `lease` is `GENERATION_LEASE_SECONDS`.
    pub fn new(store: Arc<dyn Store>, hub: Hub, analytics: Analytics, lease: Duration) -> Self {
        Self {
            store,
            hub,
            analytics,
            lease,
        }
    }

    /// The hub it finishes replies on.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// At the start of the only instance (no Redis): every pending record was left by this
    /// instance before it stopped. Returns how many replies were stored.
    pub async fn finish_all_left(&self) -> StoreResult<usize> {
        let started = Utc::now();
        let mut cursor = None;
        let mut finished = 0;
        loop {
            let batch = self
                .store
                .pending_replies(started, cursor.as_ref(), SWEEP_BATCH)
                .await?;
            let Some(last) = batch.last() else {
                return Ok(finished);
            };
            cursor = Some(PendingCursor::of(last));
            for pending in batch {
                if self.finish_or_warn(pending, SERVICE_RESTARTED).await {
                    finished += 1;
                }
            }
        }
    }

    /// With Redis: sweeps a batch of pending records every sixth of the lease, until
    /// `shutdown`. A sweep starts where the previous one stopped, so every record is looked
    /// at however many replies run.
    pub async fn sweep_until(self, shutdown: CancellationToken) {
        let every = (self.lease / 6).max(Duration::from_millis(50));
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cursor = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.sweep(cursor.take()).await {
                Ok(next) => cursor = next,
                Err(err) => tracing::warn!(error = %err, "could not look for unfinished replies"),
            }
        }
    }

    /// Looks at the records after `cursor` old enough to have missed a renewal; returns where
    /// the next sweep starts (`None`: from the first).
    async fn sweep(&self, cursor: Option<PendingCursor>) -> StoreResult<Option<PendingCursor>> {
        // A reply younger than two thirds of its lease cannot have missed a renewal yet; half
        // of it leaves room for the instances' clocks to differ.
        let age = chrono::Duration::from_std(self.lease / 2).unwrap_or_default();
        let batch = self
            .store
            .pending_replies(Utc::now() - age, cursor.as_ref(), SWEEP_BATCH)
            .await?;
        let next = match batch.last() {
            Some(last) if batch.len() as i64 == SWEEP_BATCH => Some(PendingCursor::of(last)),
            _ => None,
        };
        for pending in batch {
            self.finish_or_warn(pending, INSTANCE_STOPPED).await;
        }
        Ok(next)
    }

    /// [`Self::finish`], where a record that cannot be finished now is left for a later sweep
    /// (or start) with a warning, so it does not hold up the records after it.
    async fn finish_or_warn(&self, pending: PendingReply, error: &str) -> bool {
        self.finish(pending, error).await.unwrap_or_else(|err| {
            tracing::warn!(error = %err, "could not finish an unfinished reply; trying again later");
            false
        })
    }

    /// Finishes one reply's record when its conversation can be taken over; returns whether
    /// this call stored it.
    async fn finish(&self, pending: PendingReply, error: &str) -> StoreResult<bool> {
        let conversation = pending.user_message.conversation_id;
        let owner = match pending.owner {
            Some(id) => GenerationOwner::User(id),
            None => GenerationOwner::Anonymous,
        };
        let generation: GenerationId = pending.generation.as_str().into();
        let generations = &self.hub.generations;
        let Some(slot) = generations
            .take_over(conversation, owner, &generation)
            .await
        else {
            return Ok(false);
        };
        let stored = self.store_partial(conversation, &generation, error).await;
        let ai_message = match stored {
            Ok(Some(message)) => message,
            // Stored already: by its own instance, or by another that took it over first.
            Ok(None) => {
                slot.release().await;
                return Ok(false);
            }
            Err(err) => {
                slot.release().await;
                return Err(err);
            }
        };
        metrics::reply_recovered();
        tracing::warn!(
            conversation,
            generation = %generation,
            "a reply left unfinished by a stopped instance was stored partial"
        );
        self.analytics.message(&ai_message, pending.owner);
        let exchange = Exchange {
            user_message: pending.user_message,
            ai_message,
            stopped: false,
            truncated: false,
            kind: TurnKind::default(),
        };
        let end = LiveEvent::ReplyFailed {
            conversation,
            generation,
            failure: Failure::Interrupted,
            error: error.into(),
            partial: Some(Arc::new(exchange)),
        };
        // Freed before the end is told, as a turn does, so a new message on it is accepted.
        slot.release().await;
        self.hub.live.publish(end, None);
        Ok(true)
    }

    /// Stores what is kept of the reply's chunks, marked incomplete with `error`; `None` when
    /// the reply's record was finished already.
    async fn store_partial(
        &self,
        conversation: i64,
        generation: &GenerationId,
        error: &str,
    ) -> StoreResult<Option<Message>> {
        let events = self.hub.live.recorded(conversation, generation).await;
        let mut chunks = BTreeMap::new();
        for event in events {
            if let LiveEvent::ReplyChunk { seq, delta, .. } = event {
                chunks.entry(seq).or_insert(delta);
            }
        }
        let content: String = chunks.values().map(|delta| delta.as_ref()).collect();
        let reply = NewMessage {
            message_metadata: Some(json!({
                "stopped": false,
                "incomplete": true,
                "error": error,
            })),
            ..NewMessage::text(MessageRole::Assistant, content)
        };
        self.store
            .finish_reply(Scope::Anyone, conversation, generation, &reply)
            .await
    }
}
