//! A bounded queue with one consumer that allocates nothing until used: an idle queue holds
//! no buffer at all (a `VecDeque` allocates on its first push, and gives its buffer back once
//! drained), where a tokio `mpsc` channel allocates a block of 32 slots and cache-padded
//! halves at creation, about 1.3 KiB. Ten thousand idle WebSocket connections hold two each:
//! a hub member's deliveries and the connection's own answers.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// Why an offer was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds as many items as it may.
    Full,
    /// The consumer is gone.
    Closed,
}

/// The consumer is gone.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Woken when an item is taken (room for one more) and when the consumer goes.
    room: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    capacity: usize,
    senders: usize,
    /// The consumer is gone.
    closed: bool,
    /// A sender gave up on the queue: the consumer should stop (it missed items).
    failed: bool,
    /// The consumer waiting for an item, woken on each item and when the last sender goes.
    /// Kept here rather than in a `Notify`: a waiting consumer then holds no wait state of
    /// its own, which every idle connection's writer would carry.
    consumer: Option<Waker>,
}

/// The sending end; clones send into the same queue.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The consuming end.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue holding at most `capacity` items.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            capacity,
            senders: 1,
            closed: false,
            failed: false,
            consumer: None,
        }),
        room: Notify::new(),
    });
    let sender = Sender {
        shared: shared.clone(),
    };
    (sender, Receiver { shared })
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock; a poisoned queue is still a plain queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Sender<T> {
    /// Queues an item without waiting.
    pub fn offer(&self, item: T) -> Result<(), Refused> {
        self.push(item).map_err(|(refused, _)| refused)
    }

    /// Queues an item, waiting for room while the queue is full.
    pub async fn send(&self, mut item: T) -> Result<(), Closed> {
        loop {
            // Registered before the check, so room made in between is not missed.
            let mut room = pin!(self.shared.room.notified());
            room.as_mut().enable();
            match self.push(item) {
                Ok(()) => return Ok(()),
                Err((Refused::Closed, _)) => return Err(Closed),
                Err((Refused::Full, kept)) => item = kept,
            }
            room.await;
        }
    }

    /// Gives up on the queue: its consumer learns it at once, before the items queued.
    pub fn fail(&self) {
        let consumer = {
            let mut state = self.shared.lock();
            state.failed = true;
            state.consumer.take()
        };
        if let Some(consumer) = consumer {
            consumer.wake();
        }
    }

    /// Whether a sender gave up on the queue.
    #[cfg(test)]
    pub fn is_failed(&self) -> bool {
        self.shared.lock().failed
    }

    fn push(&self, item: T) -> Result<(), (Refused, T)> {
        let consumer = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err((Refused::Closed, item));
            }
            if state.items.len() >= state.capacity {
                return Err((Refused::Full, item));
            }
            state.items.push_back(item);
            state.consumer.take()
        };
        // Woken outside the lock: the consumer takes it at once.
        if let Some(consumer) = consumer {
            consumer.wake();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let consumer = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.consumer.take()
            } else {
                None
            }
        };
        if let Some(consumer) = consumer {
            consumer.wake();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> Receiver<T> {
    /// The next item, waiting for one; `None` once the queue is empty and every sender is
    /// gone or it was closed. Cancel-safe: an item is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item if one is queued, else registers `cx` to be woken by the next one.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        if let Some(item) = take(&mut state) {
            drop(state);
            self.shared.room.notify_one();
            return Poll::Ready(Some(item));
        }
        if state.senders == 0 || state.closed {
            return Poll::Ready(None);
        }
        register(&mut state.consumer, cx);
        Poll::Pending
    }

    /// Ready once a sender gave up on the queue, else registers `cx` to be woken then (the
    /// same wake-up as for the next item).
    pub fn poll_failed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        if state.failed {
            return Poll::Ready(());
        }
        register(&mut state.consumer, cx);
        Poll::Pending
    }

    /// Refuses every item offered from now on; those queued can still be taken.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
        // Senders waiting for room learn the queue is closed.
        self.shared.room.notify_waiters();
    }

    /// The next item if one is queued.
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<T> {
        let item = take(&mut self.shared.lock());
        if item.is_some() {
            self.shared.room.notify_one();
        }
        item
    }
}

/// Keeps the consumer's waker, unless the one kept wakes the same task.
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        slot => *slot = Some(cx.waker().clone()),
    }
}

/// Takes the first item; a drained queue gives its buffer back, so a connection that
/// received a burst long ago does not keep room for it while idle.
fn take<T>(state: &mut State<T>) -> Option<T> {
    let item = state.items.pop_front();
    if state.items.is_empty() && state.items.capacity() > 0 {
        state.items = VecDeque::new();
    }
    item
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
        // Dropped outside the lock.
        let items = std::mem::take(&mut self.shared.lock().items);
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_come_in_order_up_to_the_capacity() {
        let (sender, mut receiver) = bounded(2);
        assert_eq!(sender.offer(1), Ok(()));
        assert_eq!(sender.offer(2), Ok(()));
        assert_eq!(sender.offer(3), Err(Refused::Full));
        assert_eq!(receiver.recv().await, Some(1));
        assert_eq!(sender.offer(3), Ok(()));
        assert_eq!(receiver.recv().await, Some(2));
        assert_eq!(receiver.recv().await, Some(3));
        assert_eq!(receiver.try_recv(), None);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_an_offer() {
        let (sender, mut receiver) = bounded(8);
        let waiting = tokio::spawn(async move { receiver.recv().await });
        // The consumer runs until it waits (one thread: the spawned task runs on the yield).
        tokio::task::yield_now().await;
        sender.offer(7).unwrap();
        assert_eq!(waiting.await.unwrap(), Some(7));
    }

    #[tokio::test]
    async fn a_send_to_a_full_queue_waits_for_room() {
        let (sender, mut receiver) = bounded(1);
        sender.send(1).await.unwrap();
        let waiting = tokio::spawn(async move { sender.send(2).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(receiver.recv().await, Some(1));
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(receiver.recv().await, Some(2));
    }

    #[tokio::test]
    async fn a_send_waiting_for_room_ends_when_the_consumer_goes() {
        let (sender, receiver) = bounded(1);
        sender.send(1).await.unwrap();
        let waiting = tokio::spawn(async move { sender.send(2).await });
        tokio::task::yield_now().await;
        drop(receiver);
        assert_eq!(waiting.await.unwrap(), Err(Closed));
    }

    #[tokio::test]
    async fn the_consumer_sees_the_end_once_every_sender_is_gone() {
        let (sender, mut receiver) = bounded(8);
        let other = sender.clone();
        sender.offer(1).unwrap();
        drop(sender);
        let waiting = tokio::spawn(async move { (receiver.recv().await, receiver.recv().await) });
        tokio::task::yield_now().await;
        drop(other);
        assert_eq!(waiting.await.unwrap(), (Some(1), None));
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_offers_and_gives_what_it_held() {
        let (sender, mut receiver) = bounded(8);
        sender.offer(1).unwrap();
        receiver.close();
        assert_eq!(sender.offer(2), Err(Refused::Closed));
        assert_eq!(sender.send(3).await, Err(Closed));
        assert_eq!(receiver.recv().await, Some(1));
        assert_eq!(receiver.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_consumer_learns_at_once_that_a_sender_gave_up() {
        let (sender, mut receiver) = bounded::<u32>(8);
        let waiting = tokio::spawn(async move { poll_fn(|cx| receiver.poll_failed(cx)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        sender.fail();
        waiting.await.unwrap();
        assert!(sender.is_failed());
    }

    #[test]
    fn offers_to_a_consumer_that_is_gone_are_refused() {
        let (sender, receiver) = bounded(8);
        drop(receiver);
        assert_eq!(sender.offer(1), Err(Refused::Closed));
    }
}
