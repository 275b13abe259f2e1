//! A member's queue of deliveries: bounded, offered to without waiting, read by one
//! consumer. An idle member's queue holds no buffer at all (a `VecDeque` allocates on its
//! first push), where a tokio `mpsc` channel allocates a block of 32 slots and cache-padded
//! halves at creation: about 1.3 KiB for each of ten thousand idle WebSocket connections.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Delivery;

/// Why an offer was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The queue holds as many deliveries as it may.
    Full,
    /// The consumer is gone.
    Closed,
}

struct Shared {
    state: Mutex<State>,
    /// Woken on each delivery; a wake-up with nobody waiting is kept for the next wait.
    ready: Notify,
}

struct State {
    deliveries: VecDeque<Delivery>,
    closed: bool,
}

/// The offering end, one per member (cloned with it).
#[derive(Clone)]
pub(super) struct Offers {
    shared: Arc<Shared>,
    capacity: usize,
}

/// The consuming end of a member's queue.
pub struct Deliveries {
    shared: Arc<Shared>,
}

/// A queue holding at most `capacity` deliveries.
pub(super) fn queue(capacity: usize) -> (Offers, Deliveries) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            deliveries: VecDeque::new(),
            closed: false,
        }),
        ready: Notify::new(),
    });
    let offers = Offers {
        shared: shared.clone(),
        capacity,
    };
    (offers, Deliveries { shared })
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned queue is still a plain queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Offers {
    /// Queues a delivery without waiting.
    pub(super) fn offer(&self, delivery: Delivery) -> Result<(), Refused> {
        {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.deliveries.len() >= self.capacity {
                return Err(Refused::Full);
            }
            state.deliveries.push_back(delivery);
        }
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl std::fmt::Debug for Offers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offers")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Deliveries {
    /// The next delivery, waiting for one. Cancel-safe: a delivery is taken only when it is
    /// returned.
    pub async fn recv(&mut self) -> Delivery {
        loop {
            if let Some(delivery) = self.try_recv() {
                return delivery;
            }
            self.shared.ready.notified().await;
        }
    }

    /// The next delivery if one is queued.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let mut state = self.shared.lock();
        let delivery = state.deliveries.pop_front();
        // Give the buffer back once drained: a connection that received a burst long ago
        // should not keep room for it while idle.
        if state.deliveries.is_empty() && state.deliveries.capacity() > 0 {
            state.deliveries = VecDeque::new();
        }
        delivery
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        state.deliveries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::events::LiveEvent;

    fn delivery(conversation: i64) -> Delivery {
        Delivery::Event(Arc::new(LiveEvent::BranchChanged {
            conversation,
            current: None,
        }))
    }

    fn conversation(delivery: Delivery) -> i64 {
        match delivery {
            Delivery::Event(event) => event.conversation(),
            Delivery::Replay(_) => 0,
        }
    }

    #[tokio::test]
    async fn deliveries_come_in_order_up_to_the_capacity() {
        let (offers, mut deliveries) = queue(2);
        assert_eq!(offers.offer(delivery(1)), Ok(()));
        assert_eq!(offers.offer(delivery(2)), Ok(()));
        assert_eq!(offers.offer(delivery(3)), Err(Refused::Full));
        assert_eq!(conversation(deliveries.recv().await), 1);
        assert_eq!(offers.offer(delivery(3)), Ok(()));
        assert_eq!(conversation(deliveries.recv().await), 2);
        assert_eq!(conversation(deliveries.recv().await), 3);
        assert!(deliveries.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_an_offer() {
        let (offers, mut deliveries) = queue(8);
        let waiting = tokio::spawn(async move { conversation(deliveries.recv().await) });
        // The consumer runs until it waits (one thread: the spawned task runs on the yield).
        tokio::task::yield_now().await;
        offers.offer(delivery(7)).unwrap();
        assert_eq!(waiting.await.unwrap(), 7);
    }

    #[test]
    fn offers_to_a_consumer_that_is_gone_are_refused() {
        let (offers, deliveries) = queue(8);
        drop(deliveries);
        assert_eq!(offers.offer(delivery(1)), Err(Refused::Closed));
    }
}
