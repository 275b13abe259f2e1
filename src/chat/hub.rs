//! Live connections per conversation, broadcast, and the generations in flight.
//!
//! One process-local implementation behind a narrow API, so a cross-instance one (over a
//! message bus) can replace it. The lock is a plain mutex held only for map updates, never
//! across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::LiveEvent;

/// Identity of one WebSocket connection.
pub type ConnectionId = u64;

/// Where the events of the conversations a connection follows are queued for it.
pub type Subscriber = mpsc::Sender<LiveEvent>;

/// Who a generation is counted against for the per-user limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GenerationOwner {
    /// An authenticated user, by key.
    User(i64),
    /// An anonymous connection.
    Connection(ConnectionId),
}

/// Why a generation could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GenerationRefused {
    /// The conversation already has one.
    #[error("A reply is already being generated for this conversation")]
    ConversationBusy,
    /// The owner has too many at once.
    #[error("Too many replies are being generated at once; wait for one to finish")]
    TooManyForOwner,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<i64, HashMap<ConnectionId, Subscriber>>,
    generations: HashMap<i64, CancellationToken>,
    per_owner: HashMap<GenerationOwner, usize>,
    connections: usize,
}

/// The registry of connections and generations.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    tasks: TaskTracker,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind; they stay usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection and returns its id.
    pub fn connect(&self) -> ConnectionId {
        self.lock().connections += 1;
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Forgets a connection and its subscriptions.
    pub fn disconnect(&self, id: ConnectionId) {
        let mut inner = self.lock();
        inner.connections = inner.connections.saturating_sub(1);
        inner.rooms.retain(|_, members| {
            members.remove(&id);
            !members.is_empty()
        });
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.lock().connections
    }

    /// Subscribes a connection to a conversation's broadcasts.
    pub fn join(&self, conversation: i64, id: ConnectionId, subscriber: Subscriber) {
        self.lock()
            .rooms
            .entry(conversation)
            .or_default()
            .insert(id, subscriber);
    }

    /// Sends an event to every connection on the conversation except `except`. A connection
    /// whose queue is full misses the event rather than slowing everyone down.
    pub fn broadcast(&self, conversation: i64, except: Option<ConnectionId>, event: LiveEvent) {
        let members: Vec<Subscriber> = match self.lock().rooms.get(&conversation) {
            Some(members) => members
                .iter()
                .filter(|(id, _)| Some(**id) != except)
                .map(|(_, outbox)| outbox.clone())
                .collect(),
            None => return,
        };
        for subscriber in members {
            let _ = subscriber.try_send(event.clone());
        }
    }

    /// Claims the conversation's single generation slot and one of the owner's `limit` slots.
    pub fn begin_generation(
        self: &Arc<Self>,
        conversation: i64,
        owner: GenerationOwner,
        limit: usize,
    ) -> Result<GenerationSlot, GenerationRefused> {
        let mut inner = self.lock();
        if inner.generations.contains_key(&conversation) {
            return Err(GenerationRefused::ConversationBusy);
        }
        let running = inner.per_owner.get(&owner).copied().unwrap_or(0);
        if running >= limit {
            return Err(GenerationRefused::TooManyForOwner);
        }
        let cancel = CancellationToken::new();
        inner.generations.insert(conversation, cancel.clone());
        inner.per_owner.insert(owner, running + 1);
        Ok(GenerationSlot {
            hub: Arc::clone(self),
            conversation,
            owner,
            cancel,
        })
    }

    /// Asks the conversation's generation to stop; `false` when none is running.
    pub fn stop_generation(&self, conversation: i64) -> bool {
        match self.lock().generations.get(&conversation) {
            Some(cancel) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Generations running now.
    pub fn generations_in_flight(&self) -> usize {
        self.lock().generations.len()
    }

    /// Tracks background generation tasks so shutdown can wait for them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    fn end_generation(&self, conversation: i64, owner: GenerationOwner) {
        let mut inner = self.lock();
        inner.generations.remove(&conversation);
        if let Some(count) = inner.per_owner.get_mut(&owner) {
            *count -= 1;
            if *count == 0 {
                inner.per_owner.remove(&owner);
            }
        }
    }
}

/// A running generation's claim; dropping it frees the slots.
pub struct GenerationSlot {
    hub: Arc<Hub>,
    conversation: i64,
    owner: GenerationOwner,
    /// Cancelled by `stop_generation`.
    pub cancel: CancellationToken,
}

impl Drop for GenerationSlot {
    fn drop(&mut self) {
        self.hub.end_generation(self.conversation, self.owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_generation_per_conversation_and_a_limit_per_owner() {
        let hub = Arc::new(Hub::new());
        let owner = GenerationOwner::User(1);
        let first = hub.begin_generation(10, owner, 2).unwrap();
        assert_eq!(
            hub.begin_generation(10, owner, 2).err(),
            Some(GenerationRefused::ConversationBusy)
        );
        let _second = hub.begin_generation(11, owner, 2).unwrap();
        assert_eq!(
            hub.begin_generation(12, owner, 2).err(),
            Some(GenerationRefused::TooManyForOwner)
        );
        assert!(hub.stop_generation(10));
        assert!(first.cancel.is_cancelled());
        drop(first);
        assert!(!hub.stop_generation(10));
        assert!(hub.begin_generation(12, owner, 2).is_ok());
    }

    #[tokio::test]
    async fn broadcast_skips_the_sender_and_disconnected_connections() {
        let hub = Hub::new();
        let (a, b, c) = (hub.connect(), hub.connect(), hub.connect());
        let (tx_a, mut rx_a) = mpsc::channel(4);
        let (tx_b, mut rx_b) = mpsc::channel(4);
        let (tx_c, mut rx_c) = mpsc::channel(4);
        hub.join(1, a, tx_a);
        hub.join(1, b, tx_b);
        hub.join(1, c, tx_c);
        hub.disconnect(c);
        let ended = LiveEvent::Ended {
            conversation: 1,
            status: crate::db::ConversationStatus::Ended,
            ended_at: None,
        };
        hub.broadcast(1, Some(a), ended);
        assert!(matches!(
            rx_b.recv().await,
            Some(LiveEvent::Ended {
                conversation: 1,
                ..
            })
        ));
        assert!(rx_a.try_recv().is_err());
        assert!(rx_c.try_recv().is_err());
        assert_eq!(hub.connection_count(), 2);
    }
}
