//! The in-process hub: rooms of members per conversation, the generations running here, and
//! the logs of recent replies (swept every second by a task of their own). One plain mutex,
//! held only for map updates and queue offers, never across an `.await`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::log::ReplyLog;
use super::{
    AnonymousAdmission, AnonymousPass, ConnectionId, Deliveries, Delivery, GenerationOwner,
    GenerationRefused, GenerationSlot, Generations, LiveEvents, Member, Resumed, UserNotices,
};
use crate::chat::events::{GenerationId, LiveEvent};
use crate::user_cache::UserCache;

/// How often finished reply logs past the resume window are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The in-process hub.
#[derive(Clone)]
pub struct LocalHub {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    resume_window: Duration,
    users: Arc<UserCache>,
}

#[derive(Default)]
struct Inner {
    /// The members that follow each conversation: a vector, as a room rarely has more than a
    /// few, and ten thousand rooms of one member each cost a small allocation each.
    rooms: HashMap<i64, Vec<Member>>,
    /// The conversations each member follows.
    joined: HashMap<ConnectionId, Vec<i64>>,
    /// WebSocket connections (members that count as connections).
    connections: HashSet<ConnectionId>,
    generations: HashMap<i64, (GenerationId, CancellationToken)>,
    per_owner: HashMap<GenerationOwner, usize>,
    logs: HashMap<i64, ReplyLog>,
    /// Open anonymous connections per client address.
    anonymous: HashMap<IpAddr, usize>,
}

impl Inner {
    /// Records a reply event in its conversation's log; returns whether to deliver it.
    fn record(&mut self, event: &LiveEvent) -> bool {
        let Some(generation) = event.generation() else {
            return true;
        };
        let conversation = event.conversation();
        let current = self
            .logs
            .get(&conversation)
            .is_some_and(|log| log.generation() == generation);
        if !current {
            self.logs.insert(
                conversation,
                ReplyLog::new(conversation, generation.clone()),
            );
        }
        self.logs
            .get_mut(&conversation)
            .is_some_and(|log| log.record(event))
    }

    /// Forgets the logs past the resume window, finished or silent.
    fn sweep(&mut self, window: Duration) {
        self.logs.retain(|_, log| !log.expired(window));
    }

    /// Offers a delivery to the conversation's members but `except`; drops those that are
    /// gone or too slow.
    fn deliver(&mut self, conversation: i64, except: Option<ConnectionId>, event: &LiveEvent) {
        let Some(room) = self.rooms.get_mut(&conversation) else {
            return;
        };
        let event = Arc::new(event.clone());
        room.retain(|member| {
            Some(member.id) == except || member.offer(Delivery::Event(event.clone()))
        });
        if room.is_empty() {
            self.rooms.remove(&conversation);
        }
    }

    fn join(&mut self, conversation: i64, member: &Member) -> bool {
        let room = self.rooms.entry(conversation).or_insert_with(one);
        let first = room.is_empty();
        if !room.iter().any(|m| m.id == member.id) {
            room.push(member.clone());
        }
        let joined = self.joined.entry(member.id).or_insert_with(one);
        if !joined.contains(&conversation) {
            joined.push(conversation);
        }
        first
    }
}

/// An empty vector with room for one: most rooms, and most members' lists, stay that size.
fn one<T>() -> Vec<T> {
    Vec::with_capacity(1)
}

impl LocalHub {
    /// An empty hub that keeps finished replies for `resume_window` and forgets changed
    /// users in `users`.
    pub fn new(resume_window: Duration, users: Arc<UserCache>) -> Self {
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::default(),
                next_id: AtomicU64::new(0),
                resume_window,
                users,
            }),
        }
    }

    /// Starts the task that sweeps the reply logs; it ends with the hub.
    pub(super) fn start_sweeper(&self) {
        let shared: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SWEEP_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                let hub = LocalHub { shared };
                hub.lock().sweep(hub.shared.resume_window);
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind; they stay usable.
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn member(&self) -> (Member, Deliveries) {
        Member::new(self.shared.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Adds the member to the conversation's room; returns whether it is the room's first.
    pub(super) fn join_room(&self, conversation: i64, member: &Member) -> bool {
        self.lock().join(conversation, member)
    }

    /// Removes a member; returns the conversations nobody here follows any more.
    pub(super) fn leave_all(&self, id: ConnectionId) -> Vec<i64> {
        let mut inner = self.lock();
        inner.connections.remove(&id);
        let mut emptied = Vec::new();
        for conversation in inner.joined.remove(&id).unwrap_or_default() {
            let empty = match inner.rooms.get_mut(&conversation) {
                Some(room) => {
                    room.retain(|member| member.id != id);
                    room.is_empty()
                }
                // Emptied already, when its last member fell behind.
                None => true,
            };
            if empty {
                inner.rooms.remove(&conversation);
                emptied.push(conversation);
            }
        }
        emptied
    }

    /// Whether anyone here follows the conversation.
    pub(super) fn has_members(&self, conversation: i64) -> bool {
        self.lock().rooms.contains_key(&conversation)
    }

    /// Records and delivers an event to the members here.
    pub(super) fn deliver(&self, event: &LiveEvent, except: Option<ConnectionId>) {
        let mut inner = self.lock();
        if inner.record(event) {
            inner.deliver(event.conversation(), except, event);
        }
    }

    /// Fills in a reply's log from another instance's record, delivering only what is newer
    /// than anything seen here. A reply that runs here keeps its log: the record of another
    /// one is older (this one began while Redis was out of reach).
    pub(super) fn merge(&self, events: &[LiveEvent]) {
        let Some(first) = events.first() else {
            return;
        };
        let mut inner = self.lock();
        let conversation = first.conversation();
        let running = inner.generations.get(&conversation).map(|(g, _)| g);
        let kept = inner.logs.get(&conversation).map(ReplyLog::generation);
        if running.is_some() && running == kept && kept != first.generation() {
            return;
        }
        for event in events {
            if inner.record(event) {
                inner.deliver(event.conversation(), None, event);
            }
        }
    }

    /// Whether this instance saw the reply: `None` when it did not, else whether it saw
    /// its end.
    pub(super) fn seen(&self, conversation: i64, generation: &GenerationId) -> Option<bool> {
        self.lock()
            .logs
            .get(&conversation)
            .filter(|log| log.generation() == generation)
            .map(ReplyLog::is_finished)
    }

    /// The events kept here of a reply.
    pub(super) fn recorded(&self, conversation: i64, generation: &GenerationId) -> Vec<LiveEvent> {
        self.lock()
            .logs
            .get(&conversation)
            .filter(|log| log.generation() == generation)
            .map(|log| log.replay(0))
            .unwrap_or_default()
    }

    /// Claims the conversation here to finish the record of a reply that no generation here
    /// runs; `None` when one runs on it here.
    pub(super) fn take_over(
        &self,
        conversation: i64,
        generation: &GenerationId,
    ) -> Option<GenerationSlot> {
        let mut inner = self.lock();
        if inner.generations.contains_key(&conversation) {
            return None;
        }
        let cancel = CancellationToken::new();
        inner
            .generations
            .insert(conversation, (generation.clone(), cancel.clone()));
        let claim = LocalClaim {
            hub: self.clone(),
            conversation,
            owner: None,
        };
        Some(GenerationSlot {
            generation: generation.clone(),
            cancel,
            _claims: vec![Box::new(claim)],
            released: Vec::new(),
        })
    }

    /// Claims the generation here; the slot frees it when dropped.
    pub(super) fn claim(
        &self,
        conversation: i64,
        owner: GenerationOwner,
        limit: usize,
        generation: GenerationId,
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
        inner
            .generations
            .insert(conversation, (generation.clone(), cancel.clone()));
        inner.per_owner.insert(owner, running + 1);
        let claim = LocalClaim {
            hub: self.clone(),
            conversation,
            owner: Some(owner),
        };
        Ok(GenerationSlot {
            generation,
            cancel,
            _claims: vec![Box::new(claim)],
            released: Vec::new(),
        })
    }

    /// Stops the conversation's generation if it runs here.
    pub(super) fn stop_here(&self, conversation: i64) -> bool {
        match self.lock().generations.get(&conversation) {
            Some((_, cancel)) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Admits an anonymous connection from `address` here.
    pub(super) fn admit_here(&self, address: IpAddr, limit: usize) -> Option<AnonymousPass> {
        let mut inner = self.lock();
        let open = inner.anonymous.entry(address).or_default();
        if *open >= limit {
            return None;
        }
        *open += 1;
        let claim = AnonymousClaim {
            hub: self.clone(),
            address,
        };
        Some(AnonymousPass {
            _claims: vec![Box::new(claim)],
        })
    }

    /// Forgets a user's cached row here.
    pub(super) fn forget_user(&self, username: &str) {
        self.shared.users.forget(username);
    }

    fn release(&self, conversation: i64, owner: Option<GenerationOwner>) {
        let mut inner = self.lock();
        inner.generations.remove(&conversation);
        let Some(owner) = owner else {
            return;
        };
        if let Some(count) = inner.per_owner.get_mut(&owner) {
            *count -= 1;
            if *count == 0 {
                inner.per_owner.remove(&owner);
            }
        }
    }
}

/// Frees a local place of an anonymous connection when dropped.
struct AnonymousClaim {
    hub: LocalHub,
    address: IpAddr,
}

impl Drop for AnonymousClaim {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        if let Some(open) = inner.anonymous.get_mut(&self.address) {
            *open -= 1;
            if *open == 0 {
                inner.anonymous.remove(&self.address);
            }
        }
    }
}

/// Frees a local generation claim when dropped.
struct LocalClaim {
    hub: LocalHub,
    conversation: i64,
    /// Whose count it holds; `None` for a claim taken to finish another's reply.
    owner: Option<GenerationOwner>,
}

impl Drop for LocalClaim {
    fn drop(&mut self) {
        self.hub.release(self.conversation, self.owner);
    }
}

#[async_trait]
impl LiveEvents for LocalHub {
    fn connect(&self, counted: bool) -> (Member, Deliveries) {
        let (member, receiver) = self.member();
        if counted {
            self.lock().connections.insert(member.id);
        }
        (member, receiver)
    }

    fn disconnect(&self, id: ConnectionId) {
        self.leave_all(id);
    }

    fn connection_count(&self) -> usize {
        self.lock().connections.len()
    }

    async fn join(&self, conversation: i64, member: &Member) {
        self.join_room(conversation, member);
    }

    fn publish(&self, event: LiveEvent, except: Option<ConnectionId>) {
        self.deliver(&event, except);
    }

    async fn resume(&self, conversation: i64, member: &Member, after_seq: u64) -> Option<Resumed> {
        let mut inner = self.lock();
        inner.join(conversation, member);
        let log = inner
            .logs
            .get(&conversation)
            .filter(|log| !log.expired(self.shared.resume_window))?;
        let resumed = Resumed {
            generation: log.generation().clone(),
            generating: !log.is_finished(),
        };
        // Under the lock: nothing published meanwhile can come before the replay.
        member.offer(Delivery::Replay(log.replay(after_seq).into()));
        Some(resumed)
    }

    async fn recorded(&self, conversation: i64, generation: &GenerationId) -> Vec<LiveEvent> {
        LocalHub::recorded(self, conversation, generation)
    }
}

#[async_trait]
impl Generations for LocalHub {
    async fn begin(
        &self,
        conversation: i64,
        owner: GenerationOwner,
        limit: usize,
        generation: GenerationId,
    ) -> Result<GenerationSlot, GenerationRefused> {
        self.claim(conversation, owner, limit, generation)
    }

    async fn stop(&self, conversation: i64) -> bool {
        self.stop_here(conversation)
    }

    async fn take_over(
        &self,
        conversation: i64,
        _owner: GenerationOwner,
        generation: &GenerationId,
    ) -> Option<GenerationSlot> {
        LocalHub::take_over(self, conversation, generation)
    }

    fn in_flight(&self) -> usize {
        self.lock().generations.len()
    }
}

#[async_trait]
impl AnonymousAdmission for LocalHub {
    async fn admit(&self, address: IpAddr, limit: usize) -> Option<AnonymousPass> {
        self.admit_here(address, limit)
    }
}

impl UserNotices for LocalHub {
    fn user_changed(&self, username: &str) {
        self.forget_user(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ConversationStatus;

    fn hub() -> LocalHub {
        LocalHub::new(
            Duration::from_secs(60),
            Arc::new(UserCache::new(Duration::ZERO)),
        )
    }

    #[test]
    fn one_generation_per_conversation_and_a_limit_per_owner() {
        let hub = hub();
        let owner = GenerationOwner::User(1);
        let first = hub.claim(10, owner, 2, "a".into()).unwrap();
        assert_eq!(
            hub.claim(10, owner, 2, "b".into()).err(),
            Some(GenerationRefused::ConversationBusy)
        );
        let _second = hub.claim(11, owner, 2, "c".into()).unwrap();
        assert_eq!(
            hub.claim(12, owner, 2, "d".into()).err(),
            Some(GenerationRefused::TooManyForOwner)
        );
        assert!(hub.stop_here(10));
        assert!(first.cancel.is_cancelled());
        drop(first);
        assert!(!hub.stop_here(10));
        assert!(hub.claim(12, owner, 2, "e".into()).is_ok());
    }

    #[tokio::test]
    async fn events_skip_the_excluded_member_and_those_that_left() {
        let hub = hub();
        let (a, mut rx_a) = hub.connect(true);
        let (b, mut rx_b) = hub.connect(true);
        let (c, mut rx_c) = hub.connect(true);
        // Joining twice is joining once: one delivery each.
        for member in [&a, &b, &c, &b] {
            hub.join(1, member).await;
        }
        hub.disconnect(c.id);
        let ended = LiveEvent::Ended {
            conversation: 1,
            status: ConversationStatus::Ended,
            ended_at: None,
        };
        hub.publish(ended, Some(a.id));
        assert!(matches!(
            rx_b.recv().await,
            Some(Delivery::Event(event)) if matches!(*event, LiveEvent::Ended {
                conversation: 1,
                ..
            })
        ));
        assert!(rx_a.try_recv().is_none());
        assert!(rx_b.try_recv().is_none());
        assert!(rx_c.try_recv().is_none());
        assert_eq!(hub.connection_count(), 2);
    }

    #[tokio::test]
    async fn finished_replies_are_swept_without_a_new_one() {
        let hub = LocalHub::new(Duration::ZERO, Arc::new(UserCache::new(Duration::ZERO)));
        hub.start_sweeper();
        hub.publish(
            LiveEvent::ReplyFailed {
                conversation: 1,
                generation: "g".into(),
                failure: crate::chat::events::Failure::Llm,
                error: "cut".into(),
                partial: None,
            },
            None,
        );
        assert!(hub.lock().logs.contains_key(&1));
        // The sweeper runs every second; nothing announces it.
        while hub.lock().logs.contains_key(&1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_member_that_does_not_keep_up_is_marked_lagged() {
        let hub = hub();
        let (slow, _queue) = hub.connect(false);
        hub.join(1, &slow).await;
        for seq in 1..=(super::super::MEMBER_QUEUE as u64 + 1) {
            hub.publish(
                LiveEvent::ReplyChunk {
                    conversation: 1,
                    generation: "g".into(),
                    seq,
                    delta: "x".into(),
                },
                None,
            );
        }
        assert!(slow.is_lagged());
        assert!(!hub.has_members(1));
    }
}
