//! The Redis-backed hub: the in-process hub plus what makes it hold across instances.
//!
//! - Route, don't broadcast: an instance subscribes to a conversation's channel only while
//!   one of its members follows the conversation, so fan-out does not grow with the number
//!   of instances. Each instance also has a channel of its own (stop requests) and all share
//!   one for user changes (rare admin actions).
//! - Events are published in order by one task, in pipelined batches; each reply's events
//!   are also appended to a stream of the reply's own (bounded, expiring), and a key per
//!   conversation names its latest reply, so a client resuming on another instance reads it.
//! - Generations are leases: a key per conversation holding `instance|generation` (the
//!   generation id is the fencing token) and a sorted set per owner, renewed by the instance
//!   that runs the reply. Renewal re-creates a lease that is gone (Redis restarted empty, or
//!   the reply began while Redis was out of reach) and reports one that another generation
//!   holds: that reply stops. An instance that dies stops renewing; another one then takes
//!   the lease over to finish the reply's record ([`Generations::take_over`]).
//! - Every key of one conversation carries the conversation as a hash tag (`{42}`), and each
//!   script touches the keys of one slot only, so they run on Redis Cluster too.
//! - Redis counts as down only when its connection is (the watchdog's ping fails, or the
//!   connection reports that it was lost). A command that fails while it is up is tried once
//!   more, then reported for that operation alone. While it is down, everything works on this
//!   instance alone and events wait in the bounded publishing queue; when it answers again
//!   the hub subscribes again, renews its leases at once and catches up on the replies its
//!   members follow.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncCommands, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisResult, Script,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, OnceCell};
use tokio_util::sync::CancellationToken;

use super::local::LocalHub;
use super::{
    AnonymousAdmission, AnonymousPass, ConnectionId, Deliveries, GenerationOwner,
    GenerationRefused, GenerationSlot, Generations, LiveEvents, Member, Resumed, UserNotices,
};
use crate::chat::events::{new_generation_id, GenerationId, LiveEvent};
use crate::metrics;

/// How often the watchdog pings Redis.
const WATCHDOG_EVERY: Duration = Duration::from_millis(500);
/// How long one Redis command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before a command that failed while Redis answers is tried again (once).
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// Events waiting to be published (also while Redis is down) before new ones are dropped.
const PUBLISH_QUEUE: usize = 16_384;
/// Events published in one pipelined batch at most.
const PUBLISH_BATCH: usize = 256;
/// Messages from Redis waiting for the hub before new ones are dropped: the connection
/// never waits for the hub.
const PUSH_QUEUE: usize = 16_384;
/// Entries kept in a reply's stream at most (about; Redis trims lazily).
const STREAM_MAX_LEN: usize = 20_000;
/// Conversations caught up on at once after Redis answers again.
const CATCH_UP_CONCURRENCY: usize = 16;
/// How much earlier than Redis's last answer before an outage a reply's events may have been
/// missed (they were on their way).
const CATCH_UP_MARGIN_MS: u64 = 2_000;
/// A count no owner reaches: renewing a claim counts it whatever the limit.
const NO_LIMIT: u64 = 1 << 50;

/// Claims the lease `KEYS[1]` for the holder `ARGV[1]` for `ARGV[2]` ms: 1 when it holds it
/// (already, if a first attempt's answer was lost), 0 when another holds it.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Renews the lease `KEYS[1]` of the holder `ARGV[1]` (`instance|id`) for `ARGV[2]` ms:
/// 0 when it held it, 1 when it re-created it (it was gone, or a probe for `ARGV[3]` held
/// it), 2 when another holds it.
const RENEW: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
if not holder or holder == 'probe|' .. ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 2
";

/// Frees the lease `KEYS[1]` if the holder `ARGV[1]` still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// Counts the holder `ARGV[1]` in the owner's set `KEYS[1]` for `ARGV[2]` ms if fewer than
/// `ARGV[3]` are counted (expired entries go first): 1 when counted, 0 when the owner has as
/// many already. Counting one that is counted only extends it.
const COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Takes the lease `KEYS[1]` of the reply `ARGV[1]` over for the holder `ARGV[4]`, for
/// `ARGV[2]` ms, once the reply's instance has stopped renewing it: the lease names the reply
/// and has at most `ARGV[3]` ms left, so it missed a renewal. A lease that is gone is first
/// held by a probe, which the reply's instance takes back at its next renewal if it runs.
/// Answers `{outcome, previous holder}`, outcome `taken`, `probing` or `held`.
const TAKE_OVER: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[4] then return {'taken', ''} end
if not holder then
  redis.call('SET', KEYS[1], 'probe|' .. ARGV[1], 'PX', ARGV[2])
  return {'probing', ''}
end
local suffix = '|' .. ARGV[1]
if string.sub(holder, -#suffix) ~= suffix or string.sub(holder, 1, 8) == 'recover|'
    or redis.call('PTTL', KEYS[1]) > tonumber(ARGV[3]) then
  return {'held', holder}
end
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[2])
return {'taken', holder}
";

/// Appends an event to its reply's stream `KEYS[1]` (about `ARGV[3]` entries at most) and
/// keeps the stream for `ARGV[4]` ms from now; names the reply `ARGV[1]` the conversation's
/// latest (`KEYS[2]`) unless another reply holds the conversation's lease (`KEYS[3]`).
const LOG: &str = r"
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local holder = redis.call('GET', KEYS[3])
local suffix = '|' .. ARGV[1]
if not holder or string.sub(holder, -#suffix) == suffix then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
end
return 0
";

/// The conversation's current reply: the one its lease `KEYS[1]` names, else its latest
/// (`KEYS[2]`).
const CURRENT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder then return string.match(holder, '[^|]*$') end
return redis.call('GET', KEYS[2])
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

/// The hub's Redis connection, shared with what else the service keeps in Redis.
#[derive(Clone)]
pub struct RedisLink {
    /// The multiplexed connection (it reconnects by itself).
    pub connection: ConnectionManager,
    /// Whether Redis answers, as the hub's watchdog sees it.
    pub up: Arc<AtomicBool>,
    /// Prefix of every key.
    pub prefix: String,
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

    /// A key of the conversation: its id is the hash tag, so all of them share a slot.
    fn conversation_key(&self, conversation: i64, what: &str) -> String {
        format!("{}:conversation:{{{conversation}}}:{what}", self.prefix)
    }

    fn lease(&self, conversation: i64) -> String {
        self.conversation_key(conversation, "lease")
    }

    /// The id of the conversation's latest reply.
    fn latest(&self, conversation: i64) -> String {
        self.conversation_key(conversation, "latest")
    }

    /// The stream of one reply's events.
    fn stream(&self, conversation: i64, generation: &str) -> String {
        self.conversation_key(conversation, &format!("reply:{generation}"))
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
    /// Answered once everything queued before it has been sent.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The hub's Lua scripts.
struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
    count: Script,
    take_over: Script,
    log: Script,
    current: Script,
}

/// The state the hub's tasks share.
struct Core {
    local: LocalHub,
    redis: ConnectionManager,
    keys: Keys,
    instance: Arc<str>,
    up: Arc<AtomicBool>,
    /// Bumped each time Redis answers again, so claims held here are renewed at once.
    reconnected: watch::Sender<u64>,
    /// Conversations this instance follows; each cell is set once its channel is subscribed.
    subscriptions: Mutex<HashMap<i64, Arc<OnceCell<()>>>>,
    /// A subscription failed while Redis answered: the watchdog subscribes everything again.
    resubscribe: AtomicBool,
    /// Redis's clock (ms) at its last answer to the watchdog while up: after an outage,
    /// replies logged since then were missed here.
    answered_at: AtomicU64,
    lease: Duration,
    resume_window: Duration,
    scripts: Scripts,
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
        let up = Arc::new(AtomicBool::new(false));
        let (pushes, push_receiver) = mpsc::channel(PUSH_QUEUE);
        let connection_up = up.clone();
        // Called by the connection itself: it must never wait.
        let push_sender = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            if push.kind == PushKind::Disconnection {
                mark_down(&connection_up, &"connection lost");
            } else if let Err(mpsc::error::TrySendError::Full(_)) = pushes.try_send(push) {
                metrics::live_events_undelivered("receive_queue_full", 1);
            }
            Ok(())
        };
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_sender)
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
            up,
            reconnected: watch::Sender::new(0),
            subscriptions: Mutex::default(),
            resubscribe: AtomicBool::new(false),
            answered_at: AtomicU64::new(0),
            lease: settings.lease,
            resume_window: settings.resume_window,
            scripts: Scripts {
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                count: Script::new(COUNT),
                take_over: Script::new(TAKE_OVER),
                log: Script::new(LOG),
                current: Script::new(CURRENT),
            },
        });
        metrics::redis_up(false);
        // Up before serving when Redis answers, so the first requests are deployment-wide.
        if let Some(now) = core.ping().await {
            core.came_up().await;
            core.answered_at.store(now, Ordering::Relaxed);
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

    /// The hub's connection, for other counters kept in the same Redis.
    pub fn link(&self) -> RedisLink {
        RedisLink {
            connection: self.core.redis.clone(),
            up: self.core.up.clone(),
            prefix: self.core.keys.prefix.clone(),
        }
    }

    /// Queues something to publish; while Redis is down it waits in the queue, and when the
    /// queue is full it is dropped (and counted).
    fn queue(&self, outgoing: Outgoing) {
        if self.outgoing.try_send(outgoing).is_err() {
            metrics::live_events_undelivered("queue_full", 1);
            tracing::debug!("the Redis publishing queue is full; an event stays on this instance");
        }
    }
}

/// Notes that Redis is down; warns once per outage.
fn mark_down(up: &AtomicBool, reason: &dyn std::fmt::Display) {
    if up.swap(false, Ordering::Relaxed) {
        metrics::redis_up(false);
        tracing::warn!(error = %reason, "Redis does not answer: live chat works on this instance alone until it does");
    }
}

/// Locks a map; a panic while it was held leaves a usable map.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Runs a command made by `attempt`, and once more after a short pause if it failed while
    /// Redis answers. The caller reports a failure for its own operation.
    async fn retried<T, F, Fut>(&self, mut attempt: F) -> RedisResult<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match attempt(self.redis.clone()).await {
            Err(_) if self.is_up() => {
                tokio::time::sleep(RETRY_AFTER).await;
                attempt(self.redis.clone()).await
            }
            outcome => outcome,
        }
    }

    /// Subscribes again to everything and notes that Redis answers; then renews the claims
    /// held here and catches up on the replies followed here.
    async fn came_up(self: &Arc<Self>) {
        if let Err(err) = self.subscribe_all().await {
            tracing::debug!(error = %err, "Redis answers pings but not subscriptions yet");
            return;
        }
        if !self.up.swap(true, Ordering::Relaxed) {
            metrics::redis_up(true);
            tracing::info!("Redis answers: live chat holds across instances");
        }
        self.reconnected.send_modify(|n| *n = n.wrapping_add(1));
        let since = self.answered_at.load(Ordering::Relaxed);
        tokio::spawn(
            self.clone()
                .catch_up(since.saturating_sub(CATCH_UP_MARGIN_MS)),
        );
    }

    /// Subscribes to this instance's channels and every conversation followed here, in one
    /// command.
    async fn subscribe_all(&self) -> RedisResult<()> {
        let mut channels = vec![
            self.keys.instance_channel(&self.instance),
            self.keys.users_channel(),
        ];
        let followed: Vec<i64> = lock(&self.subscriptions).keys().copied().collect();
        channels.extend(followed.iter().map(|c| self.keys.conversation_channel(*c)));
        self.redis.clone().subscribe(channels).await
    }

    /// Delivers what members here missed while Redis was out of reach: the current reply of
    /// each conversation they follow, when this instance saw it start and not end, or did not
    /// see it and it was logged after `since_ms` (Redis's clock).
    async fn catch_up(self: Arc<Self>, since_ms: u64) {
        let followed: Vec<i64> = lock(&self.subscriptions).keys().copied().collect();
        let core = &self;
        futures::stream::iter(followed)
            .for_each_concurrent(CATCH_UP_CONCURRENCY, |conversation| async move {
                let Some(generation) = core.current(conversation).await else {
                    return;
                };
                let seen = core.local.seen(conversation, &generation);
                if seen == Some(true) {
                    return;
                }
                match core.read_log(conversation, &generation).await {
                    Ok((events, last_ms)) if seen.is_some() || last_ms >= since_ms => {
                        core.local.merge(&events);
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "could not read a reply's events"),
                }
            })
            .await;
    }

    /// Redis's clock in milliseconds, when it answers.
    async fn ping(&self) -> Option<u64> {
        let mut redis = self.redis.clone();
        let time = redis::cmd("TIME");
        let answer =
            tokio::time::timeout(COMMAND_TIMEOUT, time.query_async::<(u64, u64)>(&mut redis));
        match answer.await {
            Ok(Ok((seconds, micros))) => Some(seconds * 1000 + micros / 1000),
            _ => None,
        }
    }

    /// Makes this instance receive the conversation's events. Joins of other conversations
    /// never wait for this one's subscription; joins of the same one wait for it once.
    async fn follow(&self, conversation: i64) {
        let subscribed = lock(&self.subscriptions)
            .entry(conversation)
            .or_default()
            .clone();
        if !self.is_up() {
            // Subscribed when Redis answers again.
            return;
        }
        let channel = self.keys.conversation_channel(conversation);
        let subscribing = subscribed.get_or_try_init(|| {
            self.retried(|mut redis| {
                let channel = channel.clone();
                async move { redis.subscribe(channel).await }
            })
        });
        if let Err(err) = subscribing.await {
            tracing::warn!(error = %err, "could not subscribe to a conversation; trying again");
            self.resubscribe.store(true, Ordering::Relaxed);
        }
    }

    /// Stops receiving the conversation's events when nobody here follows it any more.
    async fn unfollow_if_unused(&self, conversation: i64) {
        {
            let mut subscriptions = lock(&self.subscriptions);
            if self.local.has_members(conversation) || subscriptions.remove(&conversation).is_none()
            {
                return;
            }
        }
        if !self.is_up() {
            return;
        }
        let channel = self.keys.conversation_channel(conversation);
        if let Err(err) = self.redis.clone().unsubscribe(&channel).await {
            // A subscription left behind only brings messages nobody here reads.
            tracing::debug!(error = %err, "could not unsubscribe from a conversation");
        }
        // A member here may have followed it again while the unsubscription was on its way.
        if lock(&self.subscriptions).contains_key(&conversation) {
            if let Err(err) = self.redis.clone().subscribe(&channel).await {
                tracing::warn!(error = %err, "could not subscribe to a conversation again");
                self.resubscribe.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Fills in this instance's log of the conversation's current reply from its stream.
    async fn backfill(&self, conversation: i64) {
        if !self.is_up() {
            return;
        }
        let Some(generation) = self.current(conversation).await else {
            return;
        };
        // A reply this instance holds to its end has nothing to fill in.
        if self.local.seen(conversation, &generation) == Some(true) {
            return;
        }
        match self.read_log(conversation, &generation).await {
            Ok((events, _)) => self.local.merge(&events),
            Err(err) => tracing::warn!(error = %err, "could not read a reply's events"),
        }
    }

    /// The id of the conversation's current reply: the one that holds it, else its latest.
    async fn current(&self, conversation: i64) -> Option<GenerationId> {
        let current = self
            .retried(|mut redis| {
                let mut current = self.scripts.current.key(self.keys.lease(conversation));
                current.key(self.keys.latest(conversation));
                async move { current.invoke_async::<Option<String>>(&mut redis).await }
            })
            .await;
        match current {
            Ok(generation) => generation.map(GenerationId::from),
            Err(err) => {
                tracing::warn!(error = %err, "could not read which reply a conversation has");
                None
            }
        }
    }

    /// The events in a reply's stream, oldest first, and when the last was logged (Redis's
    /// clock, ms).
    async fn read_log(
        &self,
        conversation: i64,
        generation: &str,
    ) -> RedisResult<(Vec<LiveEvent>, u64)> {
        let key = self.keys.stream(conversation, generation);
        let reply: redis::streams::StreamRangeReply = self
            .retried(|mut redis| {
                let key = key.clone();
                async move { redis.xrange_all(key).await }
            })
            .await?;
        // An entry's id is the time it was added, in ms, then a sequence number.
        let last_ms = reply
            .ids
            .last()
            .and_then(|entry| entry.id.split('-').next()?.parse().ok())
            .unwrap_or(0);
        let events = reply
            .ids
            .iter()
            .filter_map(|entry| entry.get::<String>("e"))
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect();
        Ok((events, last_ms))
    }

    /// Adds one event to a publishing pipeline: its stream entry (and the conversation's
    /// latest reply), then the message. The pipeline loads the log script first.
    fn add_to(&self, pipe: &mut redis::Pipeline, event: &LiveEvent) {
        let conversation = event.conversation();
        let envelope = Envelope {
            from: self.instance.clone(),
            event: event.clone(),
        };
        let Ok(payload) = serde_json::to_string(&envelope) else {
            return;
        };
        if let Some(generation) = event.generation() {
            let json = serde_json::to_string(event).unwrap_or_default();
            let keep = if event.ends_reply() {
                self.resume_window
            } else {
                self.resume_window + self.lease
            };
            let mut log = self
                .scripts
                .log
                .key(self.keys.stream(conversation, generation));
            log.key(self.keys.latest(conversation))
                .key(self.keys.lease(conversation))
                .arg(generation.as_ref())
                .arg(json)
                .arg(STREAM_MAX_LEN)
                .arg(keep.as_millis() as u64);
            pipe.invoke_script(&log).ignore();
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
async fn listen(core: Arc<Core>, mut pushes: mpsc::Receiver<PushInfo>) {
    while let Some(push) = pushes.recv().await {
        if push.kind != PushKind::Message {
            continue;
        }
        if let [channel, payload] = push.data.as_slice() {
            let channel: Option<String> = redis::from_redis_value_ref(channel).ok();
            let payload: Option<Vec<u8>> = redis::from_redis_value_ref(payload).ok();
            if let (Some(channel), Some(payload)) = (channel, payload) {
                core.receive(&channel, &payload);
            }
        }
    }
}

/// Publishes events in order, batching what queued up meanwhile into one pipeline. While
/// Redis is down a batch waits for it (and the queue behind it fills up to its bound); a
/// batch that fails while Redis answers is tried once more, then dropped and counted.
async fn publish_loop(core: Arc<Core>, mut queue: mpsc::Receiver<Outgoing>) {
    let mut reconnected = core.reconnected.subscribe();
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        // Loaded with each batch: a Redis that restarted empty has forgotten it.
        pipe.load_script(&core.scripts.log).ignore();
        // Answered once what was queued before them is sent or given up.
        let mut flushes = Vec::new();
        let mut events = 0;
        for outgoing in batch.drain(..) {
            match outgoing {
                Outgoing::Event(event) => core.add_to(&mut pipe, &event),
                Outgoing::UserChanged(username) => {
                    let payload =
                        serde_json::to_string(&UserChanged { username }).unwrap_or_default();
                    pipe.publish(core.keys.users_channel(), payload).ignore();
                }
                Outgoing::Flush(done) => {
                    flushes.push(done);
                    continue;
                }
            }
            events += 1;
        }
        // A batch of flushes alone has nothing to wait for Redis with.
        if events > 0 {
            loop {
                while !core.is_up() {
                    if reconnected.changed().await.is_err() {
                        return;
                    }
                }
                let sent = core
                    .retried(|mut redis| {
                        let pipe = &pipe;
                        async move { pipe.query_async::<()>(&mut redis).await }
                    })
                    .await;
                match sent {
                    Ok(()) => break,
                    // The connection is down, not the batch wrong: it waits for Redis.
                    Err(err) if core.ping().await.is_none() => mark_down(&core.up, &err),
                    Err(err) => {
                        metrics::live_events_undelivered("failed", events);
                        tracing::warn!(error = %err, "Redis refused a batch of live events");
                        break;
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Pings Redis; brings the hub back to cross-instance behaviour when it answers again.
async fn watchdog(core: Arc<Core>) {
    let mut ticker = tokio::time::interval(WATCHDOG_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Some(now) = core.ping().await {
            if !core.is_up() {
                core.came_up().await;
            } else if core.resubscribe.swap(false, Ordering::Relaxed) {
                if let Err(err) = core.subscribe_all().await {
                    tracing::debug!(error = %err, "could not subscribe again");
                    core.resubscribe.store(true, Ordering::Relaxed);
                }
            }
            if core.is_up() {
                core.answered_at.store(now, Ordering::Relaxed);
            }
        } else if core.is_up() {
            mark_down(&core.up, &"ping failed");
        }
    }
}

/// What a claim holds in Redis: a lease key and, for most, a place in an owner's set.
struct ClaimKeys {
    lease: String,
    owner: Option<String>,
    /// `instance|id`, the lease's value and the owner set's member.
    holder: String,
    /// The claim's own id (a generation id): a probe for it is taken back on renewal.
    id: String,
}

/// How a claim fared in Redis.
enum Acquired {
    Held,
    /// Another holds the lease.
    Busy,
    /// The owner has as many as its limit.
    Full,
}

/// How a renewal fared.
enum Renewal {
    Held,
    Recreated,
    /// Another holds the lease now.
    Lost,
}

impl Core {
    /// Claims `keys.lease` and a place under `limit` in `keys.owner`, held until the returned
    /// claim is dropped. `Ok(None)` when the limit is reached. When Redis cannot be asked,
    /// the claim is made when it answers again; `lost` is cancelled if another generation
    /// holds the lease by then, or takes it later.
    async fn claim(
        self: &Arc<Self>,
        keys: ClaimKeys,
        limit: usize,
        lost: CancellationToken,
    ) -> Result<Option<RedisClaim>, Busy> {
        let mut held = false;
        if self.is_up() {
            match self.acquire(&keys, limit).await {
                Ok(Acquired::Held) => held = true,
                Ok(Acquired::Busy) => return Err(Busy),
                Ok(Acquired::Full) => return Ok(None),
                Err(err) => tracing::warn!(
                    error = %err,
                    "could not claim a lease in Redis; it is claimed once Redis answers"
                ),
            }
        }
        Ok(Some(self.hold(keys, held, lost)))
    }

    async fn acquire(&self, keys: &ClaimKeys, limit: usize) -> RedisResult<Acquired> {
        let lease_ms = self.lease.as_millis() as u64;
        let got: i64 = self
            .retried(|mut redis| {
                let mut acquire = self.scripts.acquire.key(&keys.lease);
                acquire.arg(&keys.holder).arg(lease_ms);
                async move { acquire.invoke_async(&mut redis).await }
            })
            .await?;
        if got == 0 {
            return Ok(Acquired::Busy);
        }
        if self.count(keys, limit as u64).await? {
            return Ok(Acquired::Held);
        }
        self.release(keys, false).await;
        Ok(Acquired::Full)
    }

    /// Counts the claim against its owner; `false` when the owner has `limit` already.
    async fn count(&self, keys: &ClaimKeys, limit: u64) -> RedisResult<bool> {
        let Some(owner) = &keys.owner else {
            return Ok(true);
        };
        let lease_ms = self.lease.as_millis() as u64;
        let counted: i64 = self
            .retried(|mut redis| {
                let mut count = self.scripts.count.key(owner);
                count.arg(&keys.holder).arg(lease_ms).arg(limit);
                async move { count.invoke_async(&mut redis).await }
            })
            .await?;
        Ok(counted == 1)
    }

    /// Renews the lease (re-creating it if it is gone) and the owner's count of it.
    async fn renew(&self, keys: &ClaimKeys) -> RedisResult<Renewal> {
        let lease_ms = self.lease.as_millis() as u64;
        let renewed: i64 = self
            .retried(|mut redis| {
                let mut renew = self.scripts.renew.key(&keys.lease);
                renew.arg(&keys.holder).arg(lease_ms).arg(&keys.id);
                async move { renew.invoke_async(&mut redis).await }
            })
            .await?;
        let renewal = match renewed {
            0 => Renewal::Held,
            1 => Renewal::Recreated,
            _ => return Ok(Renewal::Lost),
        };
        // Counted again even past the limit: a reply that runs is not refused afterwards.
        self.count(keys, NO_LIMIT).await?;
        Ok(renewal)
    }

    /// Frees the lease (unless `lost`: another holds it) and the owner's count of it.
    /// Best effort: what is not freed expires with its lease.
    async fn release(&self, keys: &ClaimKeys, lost: bool) {
        if !self.is_up() {
            return;
        }
        if !lost {
            let released: RedisResult<i64> = self
                .retried(|mut redis| {
                    let mut release = self.scripts.release.key(&keys.lease);
                    release.arg(&keys.holder);
                    async move { release.invoke_async(&mut redis).await }
                })
                .await;
            if let Err(err) = released {
                tracing::debug!(error = %err, "could not free a lease; it expires");
            }
        }
        if let Some(owner) = &keys.owner {
            let removed: RedisResult<i64> = self.redis.clone().zrem(owner, &keys.holder).await;
            if let Err(err) = removed {
                tracing::debug!(error = %err, "could not free an owner's count; it expires");
            }
        }
    }

    /// Starts renewing a claim until it is dropped; `held` when it is in Redis already.
    fn hold(self: &Arc<Self>, keys: ClaimKeys, held: bool, lost: CancellationToken) -> RedisClaim {
        let done = CancellationToken::new();
        let (released, wait) = tokio::sync::oneshot::channel();
        tokio::spawn(hold_claim(
            self.clone(),
            keys,
            held,
            done.clone(),
            lost,
            released,
        ));
        RedisClaim {
            done,
            released: Some(wait),
        }
    }
}

/// The claim's own key is taken already.
struct Busy;

/// A claim in Redis: renewed while held, released when dropped.
struct RedisClaim {
    done: CancellationToken,
    /// Resolved once the release reached Redis (or was given up).
    released: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Drop for RedisClaim {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

/// Renews the claim until it is dropped, then releases it: every third of the lease, and at
/// once when Redis answers again (re-creating what a restart lost, or what could not be
/// claimed while Redis was down). If another generation holds the lease, `lost` is
/// cancelled (the reply stops) and the lease is left to it. If the process dies, neither
/// renewal nor release happens and the claim expires.
async fn hold_claim(
    core: Arc<Core>,
    keys: ClaimKeys,
    held: bool,
    done: CancellationToken,
    lost: CancellationToken,
    released: tokio::sync::oneshot::Sender<()>,
) {
    let mut reconnected = core.reconnected.subscribe();
    reconnected.borrow_and_update();
    let mut ticker = tokio::time::interval(core.lease / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if held {
        // The first tick is at once: a claim just made needs no renewal.
        ticker.tick().await;
    }
    let mut taken = false;
    loop {
        tokio::select! {
            () = done.cancelled() => break,
            _ = ticker.tick() => {}
            _ = reconnected.changed() => {}
        }
        if !core.is_up() {
            continue;
        }
        match core.renew(&keys).await {
            Ok(Renewal::Held) => {}
            Ok(Renewal::Recreated) => {
                tracing::info!("a lease that Redis had lost is held again");
            }
            Ok(Renewal::Lost) => {
                tracing::warn!("another reply holds this conversation's lease: this one stops");
                lost.cancel();
                taken = true;
                break;
            }
            Err(err) => tracing::warn!(error = %err, "could not renew a lease; trying again"),
        }
    }
    core.release(&keys, taken).await;
    let _ = released.send(());
}

#[async_trait]
impl LiveEvents for RedisHub {
    fn connect(&self, counted: bool) -> (Member, Deliveries) {
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

    async fn recorded(&self, conversation: i64, generation: &GenerationId) -> Vec<LiveEvent> {
        let mut events = self.core.local.recorded(conversation, generation);
        if self.core.is_up() {
            match self.core.read_log(conversation, generation).await {
                Ok((logged, _)) => events.extend(logged),
                Err(err) => tracing::warn!(error = %err, "could not read a reply's events"),
            }
        }
        events
    }

    async fn flush(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.outgoing.send(Outgoing::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
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
        let core = &self.core;
        let keys = ClaimKeys {
            lease: core.keys.lease(conversation),
            owner: Some(core.keys.owner(owner)),
            holder: format!("{}|{}", core.instance, generation),
            id: generation.to_string(),
        };
        match core.claim(keys, limit, slot.cancel.clone()).await {
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
        let key = self.core.keys.lease(conversation);
        let holder: RedisResult<Option<String>> = self
            .core
            .retried(|mut redis| {
                let key = key.clone();
                async move { redis.get(key).await }
            })
            .await;
        let instance = match holder {
            Ok(Some(holder)) => holder.split('|').next().unwrap_or_default().to_owned(),
            Ok(None) => return false,
            Err(err) => {
                tracing::warn!(error = %err, "could not read who generates a reply");
                return false;
            }
        };
        let payload =
            serde_json::to_string(&StopRequest { stop: conversation }).unwrap_or_default();
        let channel = self.core.keys.instance_channel(&instance);
        let sent: RedisResult<i64> = self
            .core
            .retried(|mut redis| {
                let (channel, payload) = (channel.clone(), payload.clone());
                async move { redis.publish(channel, payload).await }
            })
            .await;
        match sent {
            Ok(receivers) => receivers > 0,
            Err(err) => {
                tracing::warn!(error = %err, "could not send a stop request");
                false
            }
        }
    }

    async fn take_over(
        &self,
        conversation: i64,
        owner: GenerationOwner,
        generation: &GenerationId,
    ) -> Option<GenerationSlot> {
        let core = &self.core;
        if !core.is_up() {
            return None;
        }
        let mut slot = core.local.take_over(conversation, generation)?;
        let keys = ClaimKeys {
            lease: core.keys.lease(conversation),
            owner: None,
            holder: format!("recover|{}|{}", core.instance, generation),
            id: generation.to_string(),
        };
        let lease_ms = core.lease.as_millis() as u64;
        let outcome: RedisResult<(String, String)> = core
            .retried(|mut redis| {
                let mut take_over = core.scripts.take_over.key(&keys.lease);
                take_over
                    .arg(generation.as_ref())
                    .arg(lease_ms)
                    .arg(lease_ms / 3)
                    .arg(&keys.holder);
                async move { take_over.invoke_async(&mut redis).await }
            })
            .await;
        let previous = match outcome {
            Ok((outcome, previous)) if outcome == "taken" => previous,
            Ok(_) => return None,
            Err(err) => {
                tracing::warn!(error = %err, "could not check a reply's lease");
                return None;
            }
        };
        if !previous.is_empty() {
            // The stopped instance's reply no longer counts against its owner.
            let counted = core.keys.owner(owner);
            let _: RedisResult<i64> = core.redis.clone().zrem(counted, previous).await;
        }
        let mut claim = core.hold(keys, true, slot.cancel.clone());
        slot.released.extend(claim.released.take());
        slot._claims.push(Box::new(claim));
        Some(slot)
    }

    fn in_flight(&self) -> usize {
        self.core.local.in_flight()
    }
}

#[async_trait]
impl AnonymousAdmission for RedisHub {
    async fn admit(&self, address: IpAddr, limit: usize) -> Option<AnonymousPass> {
        let mut pass = self.core.local.admit_here(address, limit)?;
        let id = new_generation_id().to_string();
        let holder = format!("{}|{}", self.core.instance, id);
        let keys = ClaimKeys {
            lease: self.core.keys.connection_claim(&holder),
            owner: Some(self.core.keys.anonymous_address(address)),
            holder,
            id,
        };
        match self.core.claim(keys, limit, CancellationToken::new()).await {
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every key a script is given must hash to one slot: Redis Cluster refuses the rest.
    #[test]
    fn the_keys_of_one_conversation_share_a_hash_slot() {
        let keys = Keys {
            prefix: "chat-service".to_owned(),
        };
        let tag = |key: &str| -> String {
            let open = key.find('{').expect("a hash tag");
            let close = key[open..].find('}').expect("a closed hash tag") + open;
            key[open + 1..close].to_owned()
        };
        let of_one = [keys.lease(42), keys.latest(42), keys.stream(42, "9f2c")];
        let tags: HashSet<String> = of_one.iter().map(|k| tag(k)).collect();
        assert_eq!(tags, HashSet::from(["42".to_owned()]));
        assert_ne!(tag(&keys.lease(43)), tag(&keys.lease(42)));
        assert_eq!(
            keys.conversation_of(&keys.conversation_channel(42)),
            Some(42)
        );
    }
}
