//! The hub of live chat: who follows which conversation, the events of replies and
//! conversations delivered to them, the replies being generated (one per conversation, a
//! limit per owner), stopping them, and the recent replies kept for clients that resume.
//!
//! One narrow trait per concern (live events, generations, anonymous admission, user
//! notices), two implementations of each: [`LocalHub`] keeps everything in this process;
//! [`RedisHub`] adds what makes it hold across instances (a channel per conversation,
//! leases fenced by generation id that expire, a stream per reply) and falls back to the
//! local behaviour while Redis is unreachable. The rest of the code knows only [`Hub`] and the traits.

mod local;
mod log;
mod redis;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::local::LocalHub;
pub use self::redis::{RedisConfigError, RedisHub, RedisLink, RedisSettings};
use super::events::{GenerationId, LiveEvent};
use crate::queue;

/// Identity of one live consumer (a WebSocket connection or an SSE stream) in this process.
pub type ConnectionId = u64;

/// Events queued for one member before it counts as too slow.
pub const MEMBER_QUEUE: usize = 1024;

/// What a member receives, in order; an event is shared by every member that receives it.
#[derive(Debug)]
pub enum Delivery {
    /// An event as it happens.
    Event(Arc<LiveEvent>),
    /// What a resuming member missed, oldest first.
    Replay(Box<[LiveEvent]>),
}

/// The consuming end of a member's queue.
pub type Deliveries = queue::Receiver<Delivery>;

/// A live consumer's registration: where its events go, and how it learns it fell behind.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its id.
    pub id: ConnectionId,
    queue: queue::Sender<Delivery>,
}

impl Member {
    /// A member and the receiving end of its queue.
    fn new(id: ConnectionId) -> (Self, Deliveries) {
        let (queue, receiver) = queue::bounded(MEMBER_QUEUE);
        (Self { id, queue }, receiver)
    }

    /// Marks the member as fallen too far behind: it missed events and should reconnect
    /// (and resume). Its queue's consumer learns it at once (`poll_failed`).
    pub fn lag(&self) {
        self.queue.fail();
    }

    /// Whether the member fell too far behind.
    #[cfg(test)]
    pub fn is_lagged(&self) -> bool {
        self.queue.is_failed()
    }

    /// Queues a delivery without waiting; a full queue marks the member lagged. Returns
    /// whether the member is still usable.
    fn offer(&self, delivery: Delivery) -> bool {
        match self.queue.offer(delivery) {
            Ok(()) => true,
            Err(queue::Refused::Full) => {
                self.lag();
                false
            }
            Err(queue::Refused::Closed) => false,
        }
    }
}

/// Who a generation is counted against for the per-owner limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GenerationOwner {
    /// An authenticated user, by key.
    User(i64),
    /// Every anonymous connection together.
    Anonymous,
}

/// A place among the anonymous connections of one client address; dropping it frees it.
pub struct AnonymousPass {
    _claims: Vec<Box<dyn Send + Sync>>,
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

/// A running generation's claim; dropping it frees the claim everywhere it was made.
pub struct GenerationSlot {
    /// The reply's id.
    pub generation: GenerationId,
    /// Cancelled when someone stops the reply.
    pub cancel: CancellationToken,
    /// What frees the claims when dropped (local bookkeeping, a Redis lease).
    _claims: Vec<Box<dyn Send + Sync>>,
    /// Resolved once a claim held elsewhere (Redis) is released.
    released: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl GenerationSlot {
    /// Frees the claims and waits (briefly) until every instance sees them free, so a client
    /// answered right after may start the next reply at once.
    pub async fn release(self) {
        let Self {
            _claims, released, ..
        } = self;
        drop(_claims);
        for wait in released {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), wait).await;
        }
    }
}

/// What a resuming member was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The reply it resumed.
    pub generation: GenerationId,
    /// Whether the reply is still being generated.
    pub generating: bool,
}

/// Where cross-instance state lives, for health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubBackend {
    /// In this process only.
    Local,
    /// Redis, reachable or not right now.
    Redis {
        /// Whether Redis answers.
        up: bool,
    },
}

/// Who follows which conversation, the events delivered to them, and the replay of a
/// recent reply to a member that resumes it.
#[async_trait]
pub trait LiveEvents: Send + Sync + 'static {
    /// Registers a consumer; `counted` ones (WebSocket connections) count as connections.
    fn connect(&self, counted: bool) -> (Member, Deliveries);

    /// Forgets a member and its conversations.
    fn disconnect(&self, id: ConnectionId);

    /// Open WebSocket connections in this process.
    fn connection_count(&self) -> usize;

    /// Makes the member follow a conversation's events. Once this returns, events published
    /// on any instance reach it.
    async fn join(&self, conversation: i64, member: &Member);

    /// Delivers an event to every member following its conversation, wherever they are,
    /// but `except`. Never waits for a member.
    fn publish(&self, event: LiveEvent, except: Option<ConnectionId>);

    /// Makes the member follow the conversation and queues what it missed of the latest
    /// reply after `after_seq` (chunks from 1 on), then its end if it has ended. `None` when
    /// no reply is being generated or ended within the resume window.
    async fn resume(&self, conversation: i64, member: &Member, after_seq: u64) -> Option<Resumed>;

    /// What is kept of a reply's events (here, and in Redis), in no particular order and
    /// possibly twice; empty when nothing is.
    async fn recorded(&self, conversation: i64, generation: &GenerationId) -> Vec<LiveEvent>;

    /// Waits until every event published before the call has left this process for the
    /// other instances (or could not be sent). The in-process hub holds nothing back.
    async fn flush(&self) {}
}

/// The replies being generated: one per conversation, a limit per owner, and stopping them
/// wherever they run.
#[async_trait]
pub trait Generations: Send + Sync + 'static {
    /// Claims the conversation's single generation and one of the owner's `limit`.
    async fn begin(
        &self,
        conversation: i64,
        owner: GenerationOwner,
        limit: usize,
        generation: GenerationId,
    ) -> Result<GenerationSlot, GenerationRefused>;

    /// Asks the conversation's generation to stop, wherever it runs; `false` when none runs.
    async fn stop(&self, conversation: i64) -> bool;

    /// Claims the conversation to finish the record of `generation`, a reply whose instance
    /// may have stopped: `Some` once that instance is known to have stopped renewing its
    /// claim (or, in one process, when the reply does not run here). Until the slot is
    /// released, no other reply starts on the conversation.
    async fn take_over(
        &self,
        conversation: i64,
        owner: GenerationOwner,
        generation: &GenerationId,
    ) -> Option<GenerationSlot>;

    /// Generations running in this process.
    fn in_flight(&self) -> usize;
}

/// The cap on anonymous connections per client address.
#[async_trait]
pub trait AnonymousAdmission: Send + Sync + 'static {
    /// Admits one more anonymous connection from `address` while fewer than `limit` are
    /// open across the deployment; `None` when the address has as many already.
    async fn admit(&self, address: IpAddr, limit: usize) -> Option<AnonymousPass>;
}

/// Notices that a user changed, so no instance keeps a stale copy.
pub trait UserNotices: Send + Sync + 'static {
    /// Tells every instance (this one at once) that the user changed.
    fn user_changed(&self, username: &str);
}

/// The hub of live chat, by concern; see the module documentation.
#[derive(Clone)]
pub struct Hub {
    /// Members and their events.
    pub live: Arc<dyn LiveEvents>,
    /// Replies being generated.
    pub generations: Arc<dyn Generations>,
    /// Anonymous connections per address.
    pub anonymous: Arc<dyn AnonymousAdmission>,
    /// User changes.
    pub users: Arc<dyn UserNotices>,
    /// Background generation tasks, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled when the service must exit before the replies still running can finish:
    /// they end at once and are stored as far as they got.
    pub interrupt: CancellationToken,
    /// The Redis connection; `None` for the in-process hub.
    redis: Option<RedisLink>,
}

impl Hub {
    /// The in-process hub.
    pub fn local(local: LocalHub) -> Self {
        local.start_sweeper();
        let local = Arc::new(local);
        Self {
            live: local.clone(),
            generations: local.clone(),
            anonymous: local.clone(),
            users: local,
            tasks: TaskTracker::new(),
            interrupt: CancellationToken::new(),
            redis: None,
        }
    }

    /// The Redis-backed hub; Redis being unreachable is not an error.
    pub async fn redis(settings: RedisSettings, local: LocalHub) -> Result<Self, RedisConfigError> {
        local.start_sweeper();
        let redis = Arc::new(RedisHub::start(settings, local).await?);
        Ok(Self {
            redis: Some(redis.link()),
            live: redis.clone(),
            generations: redis.clone(),
            anonymous: redis.clone(),
            users: redis,
            tasks: TaskTracker::new(),
            interrupt: CancellationToken::new(),
        })
    }

    /// Sends on what the hub still holds for other instances, until `deadline`; `false` when
    /// the deadline came first.
    pub async fn flush(&self, deadline: tokio::time::Instant) -> bool {
        tokio::time::timeout_at(deadline, self.live.flush())
            .await
            .is_ok()
    }

    /// The Redis connection, when the hub has one.
    pub fn redis_link(&self) -> Option<RedisLink> {
        self.redis.clone()
    }

    /// Where cross-instance state lives.
    pub fn backend(&self) -> HubBackend {
        match &self.redis {
            None => HubBackend::Local,
            Some(link) => HubBackend::Redis {
                up: link.up.load(Ordering::Relaxed),
            },
        }
    }
}
