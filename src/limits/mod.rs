//! The counters behind message rate limits and token budgets: a GCRA bucket per user (or per
//! client address, for anonymous chat), and each user's running token totals of the current
//! day and month. [`LocalCounters`] keeps them in this process; [`RedisCounters`] keeps them
//! in Redis, checked and taken in one Lua script so every instance admits exactly what one
//! would, and falls back to its own local counters while Redis does not answer.
//!
//! The token ledger is the database: running totals are only a cache of it for the periods
//! in use. A check that finds a total missing says so ([`Verdict::Missing`]), and the caller
//! sums the ledger and [`seeds`](Counters::seed) it.

mod local;
mod redis;

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};

pub use self::local::LocalCounters;
pub use self::redis::RedisCounters;

/// Whose messages are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user, by key.
    User(i64),
    /// A client address of anonymous chat.
    Address(IpAddr),
}

/// A budget's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeriodKind {
    /// A calendar day in UTC.
    Day,
    /// A calendar month in UTC.
    Month,
}

/// One period: a calendar day or month in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// Day or month.
    pub kind: PeriodKind,
    /// Its name in keys: `20261207` or `202612`.
    pub id: String,
    /// Its first instant.
    pub start: DateTime<Utc>,
    /// The first instant after it, when its budget resets.
    pub end: DateTime<Utc>,
}

impl Period {
    /// The period of `kind` that `now` is in.
    pub fn of(kind: PeriodKind, now: DateTime<Utc>) -> Self {
        let today = now.date_naive();
        let (first, next, id) = match kind {
            PeriodKind::Day => (
                today,
                today.succ_opt().unwrap_or(today),
                today.format("%Y%m%d").to_string(),
            ),
            PeriodKind::Month => {
                let first =
                    NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
                let next = first.checked_add_months(Months::new(1)).unwrap_or(first);
                (first, next, first.format("%Y%m").to_string())
            }
        };
        let midnight = |date: NaiveDate| Utc.from_utc_datetime(&date.and_time(Default::default()));
        Self {
            kind,
            id,
            start: midnight(first),
            end: midnight(next),
        }
    }
}

/// A token budget to check: the period and the tokens it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The current period.
    pub period: Period,
    /// Tokens allowed in it.
    pub limit: u64,
}

/// A rate of messages: `per_minute` a minute, in bursts of as many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages per minute (at least 1).
    pub per_minute: u32,
}

impl Rate {
    /// Microseconds between two messages at the steady rate.
    fn interval_micros(self) -> i64 {
        60_000_000 / i64::from(self.per_minute.max(1))
    }

    /// How far ahead of now the bucket may run: a burst of `per_minute` messages.
    fn tolerance_micros(self) -> i64 {
        self.interval_micros() * (i64::from(self.per_minute.max(1)) - 1)
    }
}

/// What to check before a turn: the subject's budgets (none for an address), then one
/// message of its rate, taken when everything allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Whose counters.
    pub subject: Subject,
    /// The message rate; `None`: unlimited.
    pub rate: Option<Rate>,
    /// The token budgets, each with its current period.
    pub budgets: Vec<Budget>,
}

/// The answer to a [`Check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; one message was taken.
    Admitted,
    /// The running total of this budget's period is not known: seed it from the ledger and
    /// check again. Nothing was taken.
    Missing(PeriodKind),
    /// Too many messages; the next one is allowed after this wait. Nothing was taken.
    RateLimited(Duration),
    /// This budget is spent (`used` tokens). Nothing was taken.
    OverBudget(PeriodKind, u64),
}

/// Counters of messages and tokens; see the module documentation.
#[async_trait]
pub trait Counters: Send + Sync + 'static {
    /// Checks the budgets, then takes one message of the rate, in one atomic step.
    async fn check(&self, check: &Check) -> Verdict;

    /// Sets the running total of `user`'s `period` to `tokens`, unless one is there.
    async fn seed(&self, user: i64, period: &Period, tokens: u64);

    /// Adds `tokens` to the running totals of `user`'s `periods` that are known (a missing
    /// one is seeded from the ledger, which holds these tokens already).
    async fn add(&self, user: i64, periods: &[Period], tokens: u64);
}

/// Microseconds since the Unix epoch by this host's clock.
fn now_micros() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// The GCRA step on a bucket's theoretical arrival time `tat` (µs; `None` for a fresh
/// bucket): `Ok(new tat)` when a message is allowed at `now`, else the wait.
fn gcra(rate: Rate, tat: Option<i64>, now: i64) -> Result<i64, Duration> {
    let tat = tat.unwrap_or(now).max(now);
    let wait = tat - rate.tolerance_micros() - now;
    if wait > 0 {
        return Err(Duration::from_micros(u64::try_from(wait).unwrap_or(0)));
    }
    Ok(tat + rate.interval_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_burst_then_the_steady_rate() {
        let rate = Rate { per_minute: 3 };
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra(rate, tat, 0).unwrap());
        }
        // The fourth waits one interval (20 s) from the start.
        assert_eq!(gcra(rate, tat, 0), Err(Duration::from_secs(20)));
        assert_eq!(gcra(rate, tat, 5_000_000), Err(Duration::from_secs(15)));
        assert!(gcra(rate, tat, 20_000_000).is_ok());
    }

    #[test]
    fn periods_are_utc_calendar_days_and_months() {
        let now = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        let day = Period::of(PeriodKind::Day, now);
        assert_eq!(day.id, "20261231");
        assert_eq!(day.end, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        let month = Period::of(PeriodKind::Month, now);
        assert_eq!(month.id, "202612");
        assert_eq!(
            month.start,
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            month.end,
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
    }
}
