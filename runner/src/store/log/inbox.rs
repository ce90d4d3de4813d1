//! The evidence writer's inbox: requests kept in the order they were sent,
//! and a bell rung only when the writer has something to do.
//!
//! A channel wakes its receiver for every message. The writer holds a run's
//! deferred records until something commits them (a barrier, an append
//! someone waits for, or [`LINGER`](super::LINGER) passing), so waking it for
//! each of them only made the sender pay a system call and the writer a
//! context switch, to put the record on a list. Here a sender rings only if
//! the writer waits for anything at all (the inbox was empty), or its request
//! is urgent (someone waits for it), or the batch is full; while the writer
//! lingers over deferred requests, the next ones are queued silently.
//!
//! As with a channel: sending fails once the writer is gone (the requests
//! it had not taken are dropped, so their repliers see it stopped), and the
//! writer's `next_batch` ends once every sender is gone and nothing is left.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

struct Inbox<T> {
    state: Mutex<State<T>>,
    bell: Condvar,
}

struct State<T> {
    queue: VecDeque<T>,
    /// Live [`Sender`]s.
    senders: usize,
    /// The writer is gone: nothing more is accepted.
    closed: bool,
    /// The writer is blocked on the bell, and nobody rang it yet.
    waiting: bool,
    /// ... holding deferred requests until an urgent one, a full batch or its
    /// deadline: other requests need not ring.
    lingering: bool,
    /// Most requests the writer takes at once.
    batch: usize,
    /// How often a sender rang.
    rung: u64,
}

impl<T> Inbox<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock (pushes and drains only).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The senders' end (cloneable, like a channel's).
pub(super) struct Sender<T>(Arc<Inbox<T>>);

/// The writer's end.
pub(super) struct Receiver<T>(Arc<Inbox<T>>);

/// A new inbox whose receiver takes at most `batch` requests at once.
pub(super) fn inbox<T>(batch: usize) -> (Sender<T>, Receiver<T>) {
    let inbox = Arc::new(Inbox {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
            closed: false,
            waiting: false,
            lingering: false,
            batch: batch.max(1),
            rung: 0,
        }),
        bell: Condvar::new(),
    });
    (Sender(inbox.clone()), Receiver(inbox))
}

impl<T> Sender<T> {
    /// Queue `item` after everything sent before it; `urgent` when the
    /// writer must act on it now rather than when it next commits.
    ///
    /// # Errors
    /// The item back, when the writer is gone.
    pub(super) fn send(&self, item: T, urgent: bool) -> Result<(), T> {
        let ring = {
            let mut st = self.0.lock();
            if st.closed {
                return Err(item);
            }
            st.queue.push_back(item);
            let ring = st.waiting && (!st.lingering || urgent || st.queue.len() >= st.batch);
            if ring {
                // Rung once: it looks at everything queued before it waits again.
                st.waiting = false;
                st.rung += 1;
            }
            ring
        };
        // Rung after the lock is let go, so the writer does not wake to wait for it.
        if ring {
            self.0.bell.notify_one();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut st = self.0.lock();
            st.senders -= 1;
            st.senders == 0
        };
        if last {
            self.0.bell.notify_one();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> Receiver<T> {
    /// The next batch, in the order sent: everything queued, up to the batch
    /// size. When none of it is `urgent`, wait up to `linger` from the first
    /// request for one that is (or for a full batch), queueing what comes
    /// meanwhile. `None` once every sender is gone and nothing is queued.
    pub(super) fn next_batch(&self, linger: Duration, urgent: impl Fn(&T) -> bool) -> Option<Vec<T>> {
        let mut st = self.0.lock();
        while st.queue.is_empty() {
            if st.senders == 0 {
                return None;
            }
            st.waiting = true;
            st = self.0.bell.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.waiting = false;
        }
        let batch = st.batch;
        // Only what came since the last look can be urgent.
        let mut seen = 0;
        let until = Instant::now() + linger;
        loop {
            if st.queue.len() >= batch || st.senders == 0 || st.queue.iter().skip(seen).any(&urgent) {
                break;
            }
            seen = st.queue.len();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            (st.waiting, st.lingering) = (true, true);
            st = self.0.bell.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0;
            (st.waiting, st.lingering) = (false, false);
        }
        let n = st.queue.len().min(batch);
        Some(st.queue.drain(..n).collect())
    }
}

impl<T> Drop for Receiver<T> {
    /// The writer is gone (it ended, or panicked): refuse what comes, and
    /// drop what it had not taken, so that whoever waits for a reply sees it.
    fn drop(&mut self) {
        let left = {
            let mut st = self.0.lock();
            st.closed = true;
            std::mem::take(&mut st.queue)
        };
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn a_lone_request_that_is_not_urgent_waits_for_the_deadline() {
        let (tx, rx) = inbox::<u32>(8);
        tx.send(1, false).unwrap();
        let t = Instant::now();
        assert_eq!(rx.next_batch(Duration::from_millis(200), |_| false), Some(vec![1]));
        assert!(t.elapsed() >= Duration::from_millis(200), "taken after {:?}", t.elapsed());
    }

    #[test]
    fn while_the_writer_lingers_only_an_urgent_request_rings() {
        let (tx, rx) = inbox::<u32>(64);
        let writer = std::thread::spawn(move || (rx.next_batch(LONG, |&i| i == 99), rx));
        std::thread::sleep(Duration::from_millis(50));
        tx.send(0, false).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for i in 1..=10 {
            tx.send(i, false).unwrap();
        }
        tx.send(99, true).unwrap();
        let (batch, rx) = writer.join().unwrap();
        assert_eq!(batch.unwrap(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99]);
        // The first request (if the writer was waiting by then) and the urgent one.
        let rung = rx.0.lock().rung;
        assert!(rung <= 2, "rang {rung} times for 12 requests");
    }

    #[test]
    fn an_urgent_request_ends_the_wait_and_comes_after_what_was_queued_before_it() {
        let (tx, rx) = inbox::<u32>(8);
        tx.send(1, false).unwrap();
        let sender = std::thread::spawn({
            let tx = tx.clone();
            move || {
                std::thread::sleep(Duration::from_millis(100));
                tx.send(2, false).unwrap();
                tx.send(3, true).unwrap();
            }
        });
        let t = Instant::now();
        let batch = rx.next_batch(LONG, |&i| i == 3).unwrap();
        assert!(t.elapsed() < LONG / 2, "the urgent request did not wake the writer");
        sender.join().unwrap();
        // The request that was not urgent did not end the wait.
        assert_eq!(batch, vec![1, 2, 3]);
    }

    #[test]
    fn a_full_batch_ends_the_wait_and_the_rest_comes_next() {
        let (tx, rx) = inbox::<u32>(3);
        for i in 0..5 {
            tx.send(i, false).unwrap();
        }
        let t = Instant::now();
        assert_eq!(rx.next_batch(LONG, |_| false), Some(vec![0, 1, 2]));
        assert!(t.elapsed() < LONG / 2, "a full batch did not end the wait");
        // The rest waits for its own deadline, or (here) for the senders to go.
        drop(tx);
        assert_eq!(rx.next_batch(LONG, |_| false), Some(vec![3, 4]));
        assert_eq!(rx.next_batch(LONG, |_| false), None);
        assert!(t.elapsed() < LONG / 2);
    }

    #[test]
    fn the_writer_ends_when_every_sender_is_gone_and_nothing_is_left() {
        let (tx, rx) = inbox::<u32>(8);
        let other = tx.clone();
        tx.send(7, false).unwrap();
        drop(tx);
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(other);
        });
        let t = Instant::now();
        // The last sender leaving ends the wait for more.
        assert_eq!(rx.next_batch(LONG, |_| false), Some(vec![7]));
        assert_eq!(rx.next_batch(LONG, |_| false), None);
        assert!(t.elapsed() < LONG / 2);
        late.join().unwrap();
    }

    #[test]
    fn once_the_writer_is_gone_sending_fails_and_what_it_left_is_dropped() {
        let (tx, rx) = inbox::<Arc<()>>(8);
        let queued = Arc::new(());
        tx.send(queued.clone(), false).unwrap();
        drop(rx);
        assert_eq!(Arc::strong_count(&queued), 1, "the request the writer had not taken was dropped");
        assert!(tx.send(Arc::new(()), true).is_err());
    }
}
