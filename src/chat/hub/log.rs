//! The events of a conversation's latest reply, kept while it runs and for the resume
//! window after it ends, so a client that reconnects gets what it missed. A log whose reply
//! never ends (its instance stopped, its end was lost) goes once it has been idle for the
//! resume window and [`IDLE_GRACE`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::chat::events::{GenerationId, LiveEvent};

/// How much longer than the resume window an unfinished reply's log is kept without news:
/// longer than any pause of a reply that still runs (a tool call, a slow provider).
pub(super) const IDLE_GRACE: Duration = Duration::from_secs(60);

/// One reply's events.
#[derive(Debug)]
pub(super) struct ReplyLog {
    conversation: i64,
    generation: GenerationId,
    /// Whether the start was delivered (once, even when it arrives twice).
    started: bool,
    chunks: BTreeMap<u64, LiveEvent>,
    end: Option<LiveEvent>,
    finished_at: Option<Instant>,
    /// When the last event was recorded.
    touched: Instant,
}

impl ReplyLog {
    /// An empty log for a reply.
    pub(super) fn new(conversation: i64, generation: GenerationId) -> Self {
        Self {
            conversation,
            generation,
            started: false,
            chunks: BTreeMap::new(),
            end: None,
            finished_at: None,
            touched: Instant::now(),
        }
    }

    /// The reply this log is of.
    pub(super) fn generation(&self) -> &GenerationId {
        &self.generation
    }

    /// Records an event of this reply. Returns whether members should get it now: it is new
    /// and later than everything recorded (an older one, filled in from another instance's
    /// record, is kept for resumes but not delivered out of order).
    pub(super) fn record(&mut self, event: &LiveEvent) -> bool {
        self.touched = Instant::now();
        match event {
            LiveEvent::ReplyStarted { .. } => {
                let first = !self.started && self.chunks.is_empty() && self.end.is_none();
                self.started = true;
                first
            }
            LiveEvent::ReplyChunk { seq, .. } => {
                if self.chunks.contains_key(seq) || self.end.is_some() {
                    return false;
                }
                let newest = self.chunks.keys().next_back().copied().unwrap_or(0);
                self.chunks.insert(*seq, event.clone());
                *seq > newest
            }
            LiveEvent::ReplyDone { .. } | LiveEvent::ReplyFailed { .. } => {
                if self.end.is_some() {
                    return false;
                }
                self.end = Some(event.clone());
                self.finished_at = Some(Instant::now());
                true
            }
            // Progress of a running reply: delivered, not replayed.
            LiveEvent::ToolCall { .. } | LiveEvent::ToolResult { .. } => self.end.is_none(),
            LiveEvent::Retitled { .. }
            | LiveEvent::BranchChanged { .. }
            | LiveEvent::Ended { .. } => false,
        }
    }

    /// Whether the reply has ended.
    pub(super) fn is_finished(&self) -> bool {
        self.end.is_some()
    }

    /// Whether the reply ended longer than `window` ago, or has had no news for longer than
    /// `window` and [`IDLE_GRACE`] without ending.
    pub(super) fn expired(&self, window: Duration) -> bool {
        match self.finished_at {
            Some(at) => at.elapsed() > window,
            None => self.touched.elapsed() > window + IDLE_GRACE,
        }
    }

    /// What a client that saw chunks up to `after_seq` missed: the start, the later chunks,
    /// and the end if there is one.
    pub(super) fn replay(&self, after_seq: u64) -> Vec<LiveEvent> {
        let mut events = Vec::with_capacity(self.chunks.len() + 2);
        events.push(LiveEvent::ReplyStarted {
            conversation: self.conversation,
            generation: self.generation.clone(),
        });
        events.extend(
            self.chunks
                .range(after_seq.saturating_add(1)..)
                .map(|(_, event)| event.clone()),
        );
        events.extend(self.end.clone());
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64) -> LiveEvent {
        LiveEvent::ReplyChunk {
            conversation: 1,
            generation: "g".into(),
            seq,
            delta: format!("{seq} ").into(),
        }
    }

    fn seqs(events: &[LiveEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                LiveEvent::ReplyChunk { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn replays_what_was_missed_in_order_without_duplicates() {
        let mut log = ReplyLog::new(1, "g".into());
        assert!(log.record(&chunk(1)));
        assert!(log.record(&chunk(3)));
        // Filled in late (from another instance's record): kept, not delivered.
        assert!(!log.record(&chunk(2)));
        assert!(!log.record(&chunk(3)));
        assert_eq!(seqs(&log.replay(0)), vec![1, 2, 3]);
        assert_eq!(seqs(&log.replay(2)), vec![3]);
        assert!(matches!(log.replay(3)[0], LiveEvent::ReplyStarted { .. }));
        assert!(!log.is_finished());
    }

    #[test]
    fn a_start_is_delivered_once_and_a_log_without_end_expires_when_idle() {
        let mut log = ReplyLog::new(1, "g".into());
        let start = LiveEvent::ReplyStarted {
            conversation: 1,
            generation: "g".into(),
        };
        assert!(log.record(&start));
        assert!(!log.record(&start), "a start published twice");
        assert!(!log.expired(Duration::ZERO));
        log.touched = Instant::now() - IDLE_GRACE - Duration::from_secs(1);
        assert!(log.expired(Duration::ZERO));
    }
}
