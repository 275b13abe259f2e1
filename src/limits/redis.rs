//! Counters in Redis, shared by every instance: a check is one Lua script that reads the
//! budgets' running totals and takes one message of the rate, so N instances admit exactly
//! what one would. All keys of one subject carry it as a hash tag (`{u42}`, `{a10.0.0.1}`),
//! so each script touches one slot (Redis Cluster). Running totals expire after
//! [`TOTAL_TTL`] and are rebuilt from the ledger, so one that missed an addition (an outage,
//! a race with a rebuild) is right again soon. While Redis does not answer, the instance
//! uses its own [`LocalCounters`]: one warning per outage, and each check made so counts in
//! `usage_limits_local_total`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use super::{Check, Counters, LocalCounters, Period, PeriodKind, Subject, Verdict};
use crate::chat::hub::RedisLink;
use crate::metrics;

/// How long a running total is trusted before it is rebuilt from the ledger.
const TOTAL_TTL: Duration = Duration::from_secs(600);

/// Checks the budgets `KEYS[2..]` against the limits `ARGV[3..]`, then takes one message of
/// the GCRA bucket `KEYS[1]` (interval `ARGV[1]` µs, burst `ARGV[2]`; interval 0: no rate).
/// Answers `{0}` admitted, `{1, i}` total i missing, `{2, 0, wait µs}` rate limited,
/// `{3, i, used}` budget i spent.
const ADMIT: &str = r"
for i = 2, #KEYS do
  local used = redis.call('GET', KEYS[i])
  if not used then return {1, i - 1, 0} end
  if tonumber(used) >= tonumber(ARGV[i + 1]) then return {3, i - 1, tonumber(used)} end
end
local interval = tonumber(ARGV[1])
if interval > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local wait = tat - interval * (tonumber(ARGV[2]) - 1) - now
  if wait > 0 then return {2, 0, wait} end
  tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
end
return {0, 0, 0}
";

/// Adds `ARGV[1]` to each running total of `KEYS` that exists.
const ADD: &str = r"
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, ARGV[1]) end
end
return 0
";

/// Counters in Redis, with local ones while it is out of reach.
pub struct RedisCounters {
    redis: ConnectionManager,
    up: Arc<AtomicBool>,
    prefix: String,
    local: LocalCounters,
    /// The last check or addition fell back to the local counters.
    degraded: AtomicBool,
    admit: Script,
    add: Script,
}

impl RedisCounters {
    /// Counters on the hub's Redis connection.
    pub fn new(link: RedisLink) -> Self {
        Self {
            redis: link.connection,
            up: link.up,
            prefix: link.prefix,
            local: LocalCounters::default(),
            degraded: AtomicBool::new(false),
            admit: Script::new(ADMIT),
            add: Script::new(ADD),
        }
    }

    fn key(&self, subject: Subject, what: &str) -> String {
        match subject {
            Subject::User(id) => format!("{}:usage:{{u{id}}}:{what}", self.prefix),
            Subject::Address(address) => format!("{}:usage:{{a{address}}}:{what}", self.prefix),
        }
    }

    fn total_key(&self, user: i64, period: &Period) -> String {
        let kind = match period.kind {
            PeriodKind::Day => "day",
            PeriodKind::Month => "month",
        };
        self.key(Subject::User(user), &format!("{kind}:{}", period.id))
    }

    /// Notes that Redis answered; the local counters are for the next outage.
    fn answered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers: usage limits hold across instances again");
        }
    }

    /// Notes a fallback to the local counters; warns once per outage. The local running
    /// totals are dropped when an outage begins: they stopped counting when Redis took over.
    fn fell_back(&self, error: Option<&redis::RedisError>) {
        metrics::usage_limits_local();
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.local.forget_totals();
            match error {
                Some(error) => tracing::warn!(
                    error = %error,
                    "Redis does not answer: usage limits are counted on this instance alone"
                ),
                None => tracing::warn!(
                    "Redis does not answer: usage limits are counted on this instance alone"
                ),
            }
        }
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn admit(&self, check: &Check) -> RedisResult<Verdict> {
        let mut invocation = self.admit.prepare_invoke();
        invocation.key(self.key(check.subject, "rate"));
        let (interval, burst) = match check.rate {
            Some(rate) => (rate.interval_micros(), rate.per_minute),
            None => (0, 0),
        };
        invocation.arg(interval).arg(burst);
        if let Subject::User(user) = check.subject {
            for budget in &check.budgets {
                invocation
                    .key(self.total_key(user, &budget.period))
                    .arg(budget.limit);
            }
        }
        let (code, index, value): (i64, usize, i64) =
            invocation.invoke_async(&mut self.redis.clone()).await?;
        let budget = |i: usize| {
            check
                .budgets
                .get(i.saturating_sub(1))
                .map(|b| b.period.kind)
        };
        let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(match (code, budget(index)) {
            (1, Some(kind)) => Verdict::Missing(kind),
            (2, _) => Verdict::RateLimited(Duration::from_micros(as_u64(value))),
            (3, Some(kind)) => Verdict::OverBudget(kind, as_u64(value)),
            _ => Verdict::Admitted,
        })
    }
}

#[async_trait]
impl Counters for RedisCounters {
    async fn check(&self, check: &Check) -> Verdict {
        if !self.is_up() {
            self.fell_back(None);
            return self.local.check(check).await;
        }
        match self.admit(check).await {
            Ok(verdict) => {
                self.answered();
                verdict
            }
            Err(error) => {
                self.fell_back(Some(&error));
                self.local.check(check).await
            }
        }
    }

    async fn seed(&self, user: i64, period: &Period, tokens: u64) {
        if self.degraded.load(Ordering::Relaxed) || !self.is_up() {
            return self.local.seed(user, period, tokens).await;
        }
        let ttl = TOTAL_TTL.min(
            (period.end - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
                .max(Duration::from_secs(1)),
        );
        let seeded: RedisResult<()> = redis::cmd("SET")
            .arg(self.total_key(user, period))
            .arg(tokens)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut self.redis.clone())
            .await;
        if let Err(error) = seeded {
            self.fell_back(Some(&error));
            self.local.seed(user, period, tokens).await;
        }
    }

    async fn add(&self, user: i64, periods: &[Period], tokens: u64) {
        if self.degraded.load(Ordering::Relaxed) || !self.is_up() {
            return self.local.add(user, periods, tokens).await;
        }
        let mut invocation = self.add.prepare_invoke();
        for period in periods {
            invocation.key(self.total_key(user, period));
        }
        invocation.arg(tokens);
        let added: RedisResult<i64> = invocation.invoke_async(&mut self.redis.clone()).await;
        if let Err(error) = added {
            self.fell_back(Some(&error));
            self.local.add(user, periods, tokens).await;
        }
    }
}
