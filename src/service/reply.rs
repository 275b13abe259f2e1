//! The caller's own stream of the reply it started: the reply's progress (start, chunks,
//! tool calls), bounded, and its end, always delivered. The generation never waits for the
//! caller: a caller that falls more than its queue behind loses the progress (and is told
//! so), never the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::chat::events::LiveEvent;

/// The caller fell so far behind that it missed part of its reply's progress; it may resume
/// the reply from the last chunk it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Too slow to keep up with the reply")]
pub struct Lagged;

/// A reply's stream for its caller, and the generation's end of it.
pub fn channel(capacity: usize) -> (ReplySender, ReplyStream) {
    let (progress, progress_rx) = mpsc::channel(capacity);
    let (end, end_rx) = oneshot::channel();
    let lagged = Arc::new(AtomicBool::new(false));
    let sender = ReplySender {
        progress: Some(progress),
        end: Some(end),
        lagged: lagged.clone(),
    };
    let stream = ReplyStream {
        progress: Some(progress_rx),
        end: Some(end_rx),
        lagged,
    };
    (sender, stream)
}

/// The generation's end: offers progress without waiting, then hands over the end.
pub struct ReplySender {
    progress: Option<mpsc::Sender<LiveEvent>>,
    end: Option<oneshot::Sender<LiveEvent>>,
    lagged: Arc<AtomicBool>,
}

impl ReplySender {
    /// Offers a progress event; a full queue drops the progress for good and marks the
    /// stream lagged, a caller that has gone is left alone.
    pub fn progress(&mut self, event: &LiveEvent) {
        let Some(queue) = &self.progress else {
            return;
        };
        match queue.try_send(event.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                self.progress = None;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.progress = None,
        }
    }

    /// Hands over the reply's end, after every progress event offered before it.
    pub fn end(mut self, event: LiveEvent) {
        self.progress = None;
        if let Some(end) = self.end.take() {
            let _ = end.send(event);
        }
    }
}

/// The caller's end: progress events in order, then the end.
pub struct ReplyStream {
    progress: Option<mpsc::Receiver<LiveEvent>>,
    end: Option<oneshot::Receiver<LiveEvent>>,
    lagged: Arc<AtomicBool>,
}

impl ReplyStream {
    /// The next event: progress, then the reply's end, then `None`. `Err(Lagged)` once, in
    /// place of the progress that was missed; the end still follows.
    pub async fn next(&mut self) -> Option<Result<LiveEvent, Lagged>> {
        if let Some(progress) = &mut self.progress {
            if let Some(event) = progress.recv().await {
                return Some(Ok(event));
            }
            self.progress = None;
            if self.lagged.load(Ordering::Acquire) {
                return Some(Err(Lagged));
            }
        }
        let end = self.end.take()?;
        end.await.ok().map(Ok)
    }

    /// The reply's end, skipping its progress; `None` if the generation vanished without one.
    pub async fn end(mut self) -> Option<LiveEvent> {
        // Dropping the progress queue tells the generation not to fill it.
        self.progress = None;
        self.end.take()?.await.ok()
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
            delta: "x".into(),
        }
    }

    fn seq(event: &LiveEvent) -> u64 {
        match event {
            LiveEvent::ReplyChunk { seq, .. } => *seq,
            _ => 0,
        }
    }

    #[tokio::test]
    async fn progress_then_end_in_order() {
        let (mut sender, mut stream) = channel(8);
        sender.progress(&chunk(1));
        sender.progress(&chunk(2));
        sender.end(chunk(99));
        let mut seen = Vec::new();
        while let Some(event) = stream.next().await {
            seen.push(seq(&event.unwrap()));
        }
        assert_eq!(seen, [1, 2, 99]);
    }

    #[tokio::test]
    async fn a_caller_that_falls_behind_is_told_and_still_gets_the_end() {
        let (mut sender, mut stream) = channel(2);
        for n in 1..=5 {
            sender.progress(&chunk(n));
        }
        sender.end(chunk(99));
        assert_eq!(seq(&stream.next().await.unwrap().unwrap()), 1);
        assert_eq!(seq(&stream.next().await.unwrap().unwrap()), 2);
        assert!(matches!(stream.next().await, Some(Err(Lagged))));
        assert_eq!(seq(&stream.next().await.unwrap().unwrap()), 99);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn the_end_alone_needs_no_room() {
        let (mut sender, stream) = channel(1);
        for n in 1..=10_000 {
            sender.progress(&chunk(n));
        }
        sender.end(chunk(99));
        assert_eq!(seq(&stream.end().await.unwrap()), 99);
    }
}
