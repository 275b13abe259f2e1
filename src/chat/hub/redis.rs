//! The Redis-backed hub: the in-process hub plus what makes it hold across instances.
//!
//! - Route, don't broadcast: an instance subscribes to a conversation's channel only while
//!   one of its members follows the conversation, so fan-out does not grow with the number
//!   of instances. Each instance also has a channel of its own (stop requests) and all share
//!   one for user changes (rare admin actions).
//! - Events are published in order by one task, in pipelined batches; a reply's events are
//!   also appended to a stream per conversation (bounded, expiring) that a client resuming
//!   on another instance reads.
//! - Generations are leases (a key per conversation, a sorted set per owner) that the
//!   running instance renews; an instance that dies frees them when they expire.
//! - While Redis does not answer, everything works on this instance alone, with one
//!   warning; a watchdog reconnects and subscribes again.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::local::LocalHub;
use super::{
    AnonymousAdmission, AnonymousPass, ConnectionId, Delivery, GenerationOwner, GenerationRefused,
    GenerationSlot, Generations, LiveEvents, Member, Resumed, UserNotices,
};
use crate::chat::events::{new_generation_id, GenerationId, LiveEvent};
use crate::metrics;

/// How often the watchdog pings Redis.
const WATCHDOG_EVERY: Duration = Duration::from_millis(500);
/// How long one Redis command may take before Redis counts as unreachable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Events waiting to be published before new ones are dropped.
const PUBLISH_QUEUE: usize = 16_384;
/// Events published in one pipelined batch at most.
const PUBLISH_BATCH: usize = 256;
/// Entries kept in a reply's stream at most (about; Redis trims lazily).
const STREAM_MAX_LEN: usize = 20_000;

/// Claims the conversation's generation and one of the owner's; 0 when claimed, 1 when the
/// conversation is busy, 2 when the owner has too many. Expired owner claims are dropped.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 2 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 0
";

/// Extends a claim that is still ours.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 0
";

/// Frees a claim that is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
";

/// How the Redis hub is set up.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// How long a claim outlives an instance that stopped renewing it.
    pub lease: Duration,
    /// How long a finished reply can still be resumed.
    pub resume_window: Duration,
}

/// Why the Redis hub could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("REDIS_URL is not a usable Redis URL")]
pub struct RedisConfigError(#[source] redis::RedisError);

/// Key and channel names, all under the prefix.
struct Keys {
    prefix: String,
}

impl Keys {
    fn conversation_channel(&self, conversation: i64) -> String {
        format!("{}:conversation:{conversation}", self.prefix)
    }

    fn instance_channel(&self, instance: &str) -> String {
        format!("{}:instance:{instance}", self.prefix)
    }

    fn users_channel(&self) -> String {
        format!("{}:users", self.prefix)
    }

    fn lease(&self, conversation: i64) -> String {
        format!("{}:lease:{conversation}", self.prefix)
    }

    fn owner(&self, owner: GenerationOwner) -> String {
        match owner {
            GenerationOwner::User(id) => format!("{}:owner:user:{id}", self.prefix),
            GenerationOwner::Anonymous => format!("{}:owner:anonymous", self.prefix),
        }
    }

    /// The claims of the anonymous connections of one address.
    fn anonymous_address(&self, address: IpAddr) -> String {
        format!("{}:anonymous-address:{address}", self.prefix)
    }

    /// A key of one connection's claim (never taken before: it only carries the lease).
    fn connection_claim(&self, holder: &str) -> String {
        format!("{}:connection:{holder}", self.prefix)
    }

    fn stream(&self, conversation: i64) -> String {
        format!("{}:reply:{conversation}", self.prefix)
    }

    /// The conversation of a conversation channel's name.
    fn conversation_of(&self, channel: &str) -> Option<i64> {
        channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":conversation:")?
            .parse()
            .ok()
    }
}

/// An event as it crosses instances.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The instance that published it (which delivered it locally already).
    from: Arc<str>,
    event: LiveEvent,
}

/// A message on an instance's own channel.
#[derive(Serialize, Deserialize)]
struct StopRequest {
    stop: i64,
}

/// A message on the users channel.
#[derive(Serialize, Deserialize)]
struct UserChanged {
    username: String,
}

/// What the publishing task sends.
enum Outgoing {
    Event(LiveEvent),
    UserChanged(String),
}

/// The state the hub's tasks share.
struct Core {
    local: LocalHub,
    redis: ConnectionManager,
    keys: Keys,
    instance: Arc<str>,
    up: Arc<AtomicBool>,
    /// Conversations whose channel this instance subscribes to.
    subscriptions: tokio::sync::Mutex<HashSet<i64>>,
    lease: Duration,
    resume_window: Duration,
    acquire: Script,
    renew: Script,
    release: Script,
}

/// The Redis-backed hub.
pub struct RedisHub {
    core: Arc<Core>,
    outgoing: mpsc::Sender<Outgoing>,
}

impl RedisHub {
    /// Sets up the hub and its tasks. Redis being unreachable is not an error: the hub
    /// starts on its own and connects when Redis answers.
    pub async fn start(settings: RedisSettings, local: LocalHub) -> Result<Self, RedisConfigError> {
        let info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(RedisConfigError)?;
        let redis_info = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client =
            redis::Client::open(info.set_redis_settings(redis_info)).map_err(RedisConfigError)?;
        let (pushes, push_receiver) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(pushes)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(WATCHDOG_EVERY);
        let redis =
            ConnectionManager::new_lazy_with_config(client, config).map_err(RedisConfigError)?;
        let core = Arc::new(Core {
            local,
            redis,
            keys: Keys {
                prefix: settings.prefix,
            },
            instance: new_generation_id(),
            up: Arc::default(),
            subscriptions: tokio::sync::Mutex::default(),
            lease: settings.lease,
            resume_window: settings.resume_window,
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        });
        metrics::redis_up(false);
        // Up before serving when Redis answers, so the first requests are deployment-wide.
        if core.ping().await {
            core.came_up().await;
        } else {
            tracing::warn!(
                "Redis does not answer: live chat works on this instance alone until it does"
            );
        }
        let (outgoing, queue) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(listen(core.clone(), push_receiver));
        tokio::spawn(publish_loop(core.clone(), queue));
        tokio::spawn(watchdog(core.clone()));
        Ok(Self { core, outgoing })
    }

    /// Whether Redis answers, as it changes.
    pub fn up_flag(&self) -> Arc<AtomicBool> {
        self.core.up.clone()
    }

    fn queue(&self, outgoing: Outgoing) {
        if !self.core.is_up() {
            return;
        }
        if self.outgoing.try_send(outgoing).is_err() {
            tracing::debug!("the Redis publishing queue is full; an event stays on this instance");
        }
    }
}

impl Core {
    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Notes a failed command; warns once per outage.
    fn went_down(&self, err: &redis::RedisError) {
        if self.up.swap(false, Ordering::Relaxed) {
            metrics::redis_up(false);
            tracing::warn!(error = %err, "Redis does not answer: live chat works on this instance alone until it does");
        }
    }

    /// Subscribes again to everything and notes that Redis answers.
    async fn came_up(&self) {
        let mut redis = self.redis.clone();
        let mut channels = vec![
            self.keys.instance_channel(&self.instance),
            self.keys.users_channel(),
        ];
        channels.extend(
            self.subscriptions
                .lock()
                .await
                .iter()
                .map(|c| self.keys.conversation_channel(*c)),
        );
        for channel in channels {
            if let Err(err) = redis.subscribe(&channel).await {
                self.went_down(&err);
                return;
            }
        }
        if !self.up.swap(true, Ordering::Relaxed) {
            metrics::redis_up(true);
            tracing::info!("Redis answers: live chat holds across instances");
        }
    }

    async fn ping(&self) -> bool {
        let mut redis = self.redis.clone();
        let ping = redis::cmd("PING");
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, ping.query_async::<String>(&mut redis));
        matches!(answer.await, Ok(Ok(_)))
    }

    /// Makes this instance receive the conversation's events.
    async fn follow(&self, conversation: i64) {
        let mut subscriptions = self.subscriptions.lock().await;
        if !subscriptions.insert(conversation) || !self.is_up() {
            return;
        }
        let channel = self.keys.conversation_channel(conversation);
        if let Err(err) = self.redis.clone().subscribe(&channel).await {
            self.went_down(&err);
        }
    }

    /// Stops receiving the conversation's events when nobody here follows it any more.
    async fn unfollow_if_unused(&self, conversation: i64) {
        let mut subscriptions = self.subscriptions.lock().await;
        if self.local.has_members(conversation) || !subscriptions.remove(&conversation) {
            return;
        }
        if self.is_up() {
            let channel = self.keys.conversation_channel(conversation);
            if let Err(err) = self.redis.clone().unsubscribe(&channel).await {
                self.went_down(&err);
            }
        }
    }

    /// Fills in this instance's log of the conversation's reply from its stream.
    async fn backfill(&self, conversation: i64) {
        if !self.is_up() {
            return;
        }
        let key = self.keys.stream(conversation);
        let reply: redis::RedisResult<redis::streams::StreamRangeReply> =
            self.redis.clone().xrange_all(&key).await;
        match reply {
            Ok(reply) => {
                let events: Vec<LiveEvent> = reply
                    .ids
                    .iter()
                    .filter_map(|entry| entry.get::<String>("e"))
                    .filter_map(|json| serde_json::from_str(&json).ok())
                    .collect();
                self.local.merge(&events);
            }
            Err(err) => self.went_down(&err),
        }
    }

    /// Adds one event to a publishing pipeline: its stream entry, then the message.
    fn add_to(&self, pipe: &mut redis::Pipeline, event: &LiveEvent) {
        let conversation = event.conversation();
        let envelope = Envelope {
            from: self.instance.clone(),
            event: event.clone(),
        };
        let Ok(payload) = serde_json::to_string(&envelope) else {
            return;
        };
        if event.generation().is_some() {
            let stream = self.keys.stream(conversation);
            if matches!(event, LiveEvent::ReplyStarted { .. }) {
                pipe.del(&stream).ignore();
            }
            let json = serde_json::to_string(event).unwrap_or_default();
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAX_LEN)
                .arg("*")
                .arg("e")
                .arg(json)
                .ignore();
            let keep = if event.ends_reply() {
                self.resume_window
            } else {
                self.resume_window + self.lease
            };
            pipe.pexpire(&stream, keep.as_millis() as i64).ignore();
        }
        pipe.publish(self.keys.conversation_channel(conversation), payload)
            .ignore();
    }

    /// Handles a message from a channel.
    fn receive(&self, channel: &str, payload: &[u8]) {
        if self.keys.conversation_of(channel).is_some() {
            if let Ok(envelope) = serde_json::from_slice::<Envelope>(payload) {
                if envelope.from != self.instance {
                    self.local.deliver(&envelope.event, None);
                }
            }
        } else if channel == self.keys.users_channel() {
            if let Ok(changed) = serde_json::from_slice::<UserChanged>(payload) {
                self.local.forget_user(&changed.username);
            }
        } else if let Ok(request) = serde_json::from_slice::<StopRequest>(payload) {
            self.local.stop_here(request.stop);
        }
    }
}

/// Hands the messages of subscribed channels to the hub.
async fn listen(core: Arc<Core>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::Message => {
                if let [channel, payload] = push.data.as_slice() {
                    let channel: Option<String> = redis::from_redis_value_ref(channel).ok();
                    let payload: Option<Vec<u8>> = redis::from_redis_value_ref(payload).ok();
                    if let (Some(channel), Some(payload)) = (channel, payload) {
                        core.receive(&channel, &payload);
                    }
                }
            }
            PushKind::Disconnection => {
                let err = redis::RedisError::from((redis::ErrorKind::Io, "connection lost"));
                core.went_down(&err);
            }
            _ => {}
        }
    }
}

/// Publishes events in order, batching what queued up meanwhile into one pipeline.
async fn publish_loop(core: Arc<Core>, mut queue: mpsc::Receiver<Outgoing>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for outgoing in batch.drain(..) {
            match outgoing {
                Outgoing::Event(event) => core.add_to(&mut pipe, &event),
                Outgoing::UserChanged(username) => {
                    let payload =
                        serde_json::to_string(&UserChanged { username }).unwrap_or_default();
                    pipe.publish(core.keys.users_channel(), payload).ignore();
                }
            }
        }
        if !core.is_up() {
            continue;
        }
        let mut redis = core.redis.clone();
        if let Err(err) = pipe.query_async::<()>(&mut redis).await {
            core.went_down(&err);
        }
    }
}

/// Pings Redis; brings the hub back to cross-instance behaviour when it answers again.
async fn watchdog(core: Arc<Core>) {
    let mut ticker = tokio::time::interval(WATCHDOG_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if core.ping().await {
            if !core.is_up() {
                core.came_up().await;
            }
        } else if core.is_up() {
            let err = redis::RedisError::from((redis::ErrorKind::Io, "ping failed"));
            core.went_down(&err);
        }
    }
}

/// The claim's own key is taken already.
struct Busy;

impl Core {
    /// Claims `keys[0]` and a place under the limit in `keys[1]`, held until the returned
    /// claim is dropped. `Ok(None)` when the limit is reached; without Redis the claim is
    /// left to this instance alone (an empty claim).
    async fn claim(
        self: &Arc<Self>,
        keys: [String; 2],
        holder: String,
        limit: usize,
    ) -> Result<Option<RedisClaim>, Busy> {
        if !self.is_up() {
            return Ok(Some(RedisClaim::none()));
        }
        let mut redis = self.redis.clone();
        let claimed = self
            .acquire
            .key(&keys[0])
            .key(&keys[1])
            .arg(&holder)
            .arg(self.lease.as_millis() as u64)
            .arg(limit)
            .invoke_async::<i64>(&mut redis)
            .await;
        match claimed {
            Ok(0) => {
                let done = CancellationToken::new();
                let (released, wait) = tokio::sync::oneshot::channel();
                tokio::spawn(hold_claim(
                    self.clone(),
                    keys,
                    holder,
                    done.clone(),
                    released,
                ));
                Ok(Some(RedisClaim {
                    done,
                    released: Some(wait),
                }))
            }
            Ok(1) => Err(Busy),
            Ok(_) => Ok(None),
            Err(err) => {
                self.went_down(&err);
                Ok(Some(RedisClaim::none()))
            }
        }
    }
}

/// A generation's claim in Redis: renewed while held, released when dropped.
struct RedisClaim {
    done: CancellationToken,
    /// Resolved once the release reached Redis.
    released: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl RedisClaim {
    /// A claim that holds nothing in Redis (made while Redis was down).
    fn none() -> Self {
        let done = CancellationToken::new();
        done.cancel();
        Self {
            done,
            released: None,
        }
    }
}

impl Drop for RedisClaim {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

/// Renews the claim until it is dropped, then releases it. If the process dies, neither
/// happens and the claim expires.
async fn hold_claim(
    core: Arc<Core>,
    keys: [String; 2],
    holder: String,
    done: CancellationToken,
    released: tokio::sync::oneshot::Sender<()>,
) {
    let lease_ms = core.lease.as_millis() as u64;
    let mut ticker = tokio::time::interval(core.lease / 3);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = done.cancelled() => break,
            _ = ticker.tick() => {
                let mut redis = core.redis.clone();
                let renewed = core
                    .renew
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(&holder)
                    .arg(lease_ms)
                    .invoke_async::<i64>(&mut redis)
                    .await;
                if let Err(err) = renewed {
                    core.went_down(&err);
                }
            }
        }
    }
    let mut redis = core.redis.clone();
    let _ = core
        .release
        .key(&keys[0])
        .key(&keys[1])
        .arg(&holder)
        .invoke_async::<i64>(&mut redis)
        .await;
    let _ = released.send(());
}

#[async_trait]
impl LiveEvents for RedisHub {
    fn connect(&self, counted: bool) -> (Member, mpsc::Receiver<Delivery>) {
        self.core.local.connect(counted)
    }

    fn disconnect(&self, id: ConnectionId) {
        for conversation in self.core.local.leave_all(id) {
            let core = self.core.clone();
            tokio::spawn(async move { core.unfollow_if_unused(conversation).await });
        }
    }

    fn connection_count(&self) -> usize {
        self.core.local.connection_count()
    }

    async fn join(&self, conversation: i64, member: &Member) {
        self.core.local.join_room(conversation, member);
        self.core.follow(conversation).await;
    }

    fn publish(&self, event: LiveEvent, except: Option<ConnectionId>) {
        self.core.local.deliver(&event, except);
        self.queue(Outgoing::Event(event));
    }

    async fn resume(&self, conversation: i64, member: &Member, after_seq: u64) -> Option<Resumed> {
        // Follow first, then read the stream: whatever is published after the read arrives
        // live, and the log drops what arrives twice.
        self.core.follow(conversation).await;
        self.core.backfill(conversation).await;
        self.core
            .local
            .resume(conversation, member, after_seq)
            .await
    }
}

#[async_trait]
impl Generations for RedisHub {
    async fn begin(
        &self,
        conversation: i64,
        owner: GenerationOwner,
        limit: usize,
        generation: GenerationId,
    ) -> Result<GenerationSlot, GenerationRefused> {
        let mut slot = self
            .core
            .local
            .claim(conversation, owner, limit, generation.clone())?;
        if !self.core.is_up() {
            return Ok(slot);
        }
        let core = &self.core;
        let keys = [core.keys.lease(conversation), core.keys.owner(owner)];
        let holder = format!("{}|{}", core.instance, generation);
        match core.claim(keys, holder, limit).await {
            Ok(Some(mut claim)) => {
                slot.released.extend(claim.released.take());
                slot._claims.push(Box::new(claim));
                Ok(slot)
            }
            Ok(None) => Err(GenerationRefused::TooManyForOwner),
            Err(Busy) => Err(GenerationRefused::ConversationBusy),
        }
    }

    async fn stop(&self, conversation: i64) -> bool {
        if self.core.local.stop_here(conversation) {
            return true;
        }
        if !self.core.is_up() {
            return false;
        }
        let mut redis = self.core.redis.clone();
        let holder: redis::RedisResult<Option<String>> =
            redis.get(self.core.keys.lease(conversation)).await;
        let instance = match holder {
            Ok(Some(holder)) => holder.split('|').next().unwrap_or_default().to_owned(),
            Ok(None) => return false,
            Err(err) => {
                self.core.went_down(&err);
                return false;
            }
        };
        let payload =
            serde_json::to_string(&StopRequest { stop: conversation }).unwrap_or_default();
        let sent: redis::RedisResult<i64> = redis
            .publish(self.core.keys.instance_channel(&instance), payload)
            .await;
        match sent {
            Ok(receivers) => receivers > 0,
            Err(err) => {
                self.core.went_down(&err);
                false
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.core.local.in_flight()
    }
}

#[async_trait]
impl AnonymousAdmission for RedisHub {
    async fn admit(&self, address: IpAddr, limit: usize) -> Option<AnonymousPass> {
        let mut pass = self.core.local.admit_here(address, limit)?;
        let holder = format!("{}|{}", self.core.instance, new_generation_id());
        let keys = [
            self.core.keys.connection_claim(&holder),
            self.core.keys.anonymous_address(address),
        ];
        match self.core.claim(keys, holder, limit).await {
            Ok(Some(claim)) => {
                pass._claims.push(Box::new(claim));
                Some(pass)
            }
            Ok(None) | Err(Busy) => None,
        }
    }
}

impl UserNotices for RedisHub {
    fn user_changed(&self, username: &str) {
        self.core.local.forget_user(username);
        self.queue(Outgoing::UserChanged(username.to_owned()));
    }
}
