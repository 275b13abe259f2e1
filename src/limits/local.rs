//! Counters in this process: exact for one instance.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{gcra, now_micros, Check, Counters, Period, PeriodKind, Subject, Verdict};

/// Buckets past this many are swept of the idle ones at the next message; after a sweep, the
/// next waits until the buckets left have doubled, so sweeping stays linear in the messages.
const SWEEP_ABOVE: usize = 10_000;

/// The counters of one process.
#[derive(Default)]
pub struct LocalCounters {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each subject's theoretical arrival time (µs).
    buckets: HashMap<Subject, i64>,
    /// The size past which the buckets are swept next (0: [`SWEEP_ABOVE`]).
    sweep_above: usize,
    /// Each user's running total of a period, with the period's id.
    totals: HashMap<(i64, PeriodKind), (String, u64)>,
}

impl LocalCounters {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every running total, so each is read from the ledger again: what this process
    /// counted may be behind what other instances recorded meanwhile.
    pub fn forget_totals(&self) {
        self.lock().totals.clear();
    }
}

#[async_trait]
impl Counters for LocalCounters {
    async fn check(&self, check: &Check) -> Verdict {
        let mut state = self.lock();
        if let super::Subject::User(user) = check.subject {
            for budget in &check.budgets {
                match state.totals.get(&(user, budget.period.kind)) {
                    Some((id, used)) if *id == budget.period.id => {
                        if *used >= budget.limit {
                            return Verdict::OverBudget(budget.period.kind, *used);
                        }
                    }
                    _ => return Verdict::Missing(budget.period.kind),
                }
            }
        }
        let Some(rate) = check.rate else {
            return Verdict::Admitted;
        };
        let now = now_micros();
        match gcra(rate, state.buckets.get(&check.subject).copied(), now) {
            Ok(tat) => {
                if state.buckets.len() > state.sweep_above.max(SWEEP_ABOVE) {
                    state.buckets.retain(|_, tat| *tat > now);
                    state.sweep_above = 2 * state.buckets.len();
                }
                state.buckets.insert(check.subject, tat);
                Verdict::Admitted
            }
            Err(wait) => Verdict::RateLimited(wait),
        }
    }

    async fn seed(&self, user: i64, period: &Period, tokens: u64) {
        let mut state = self.lock();
        let total = state
            .totals
            .entry((user, period.kind))
            .or_insert_with(|| (period.id.clone(), tokens));
        if total.0 != period.id {
            *total = (period.id.clone(), tokens);
        }
    }

    async fn add(&self, user: i64, periods: &[Period], tokens: u64) {
        let mut state = self.lock();
        for period in periods {
            if let Some((id, used)) = state.totals.get_mut(&(user, period.kind)) {
                if *id == period.id {
                    *used = used.saturating_add(tokens);
                }
            }
        }
    }
}
