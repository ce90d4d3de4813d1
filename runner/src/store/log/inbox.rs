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
    /// Most requests the writer takes at once.
    batch: usize,
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
    /// How often a sender rang.
    rung: u64,
}

impl<T> Inbox<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock (pushes, drains and the
        // writer's test for urgent requests, a `match`).
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
            rung: 0,
        }),
        bell: Condvar::new(),
        batch: batch.max(1),
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
            let ring = st.waiting && (!st.lingering || urgent || st.queue.len() >= self.0.batch);
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
        let batch = self.0.batch;
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

    /// A linger no test waits out: a batch taken before it was rung for.
    const LONG: Duration = Duration::from_secs(30);
    /// How long a test waits for a writer that was rung.
    const PROMPT: Duration = Duration::from_secs(10);

    /// The writer on its own thread, blocked in `next_batch` (given time to
    /// get there); its batch and the inbox come back on the channel.
    type Taken = (Option<Vec<u32>>, Receiver<u32>);
    fn writer(rx: Receiver<u32>, linger: Duration, urgent: fn(&u32) -> bool) -> std::sync::mpsc::Receiver<Taken> {
        let (done, taken) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let batch = rx.next_batch(linger, urgent);
            let _ = done.send((batch, rx));
        });
        std::thread::sleep(Duration::from_millis(50));
        taken
    }

    fn taken(writer: &std::sync::mpsc::Receiver<Taken>, why: &str) -> Taken {
        writer.recv_timeout(PROMPT).unwrap_or_else(|_| panic!("{why}"))
    }

    #[test]
    fn a_lone_request_that_is_not_urgent_waits_for_the_deadline() {
        let (tx, rx) = inbox::<u32>(8);
        tx.send(1, false).unwrap();
        let t = Instant::now();
        assert_eq!(rx.next_batch(Duration::from_millis(200), |_| false), Some(vec![1]));
        assert!(t.elapsed() >= Duration::from_millis(200), "taken after {:?}", t.elapsed());
    }

    #[test]
    fn a_request_that_is_not_urgent_wakes_an_idle_writer() {
        let (tx, rx) = inbox::<u32>(8);
        let w = writer(rx, Duration::from_millis(100), |_| false);
        tx.send(1, false).unwrap();
        let (batch, _) = taken(&w, "the idle writer was not woken: the request would wait for the next urgent one");
        assert_eq!(batch, Some(vec![1]));
    }

    #[test]
    fn while_the_writer_lingers_only_an_urgent_request_rings() {
        let (tx, rx) = inbox::<u32>(64);
        let w = writer(rx, LONG, |&i| i == 99);
        tx.send(0, false).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for i in 1..=10 {
            tx.send(i, false).unwrap();
        }
        tx.send(99, true).unwrap();
        let (batch, rx) = taken(&w, "the urgent request did not end the wait");
        assert_eq!(batch.unwrap(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99]);
        // The first request (if the writer was waiting by then) and the urgent one.
        let rung = rx.0.lock().rung;
        assert!(rung <= 2, "rang {rung} times for 12 requests");
    }

    #[test]
    fn an_urgent_request_queued_before_the_rung_writer_wakes_is_not_missed() {
        let (tx, rx) = inbox::<u32>(8);
        let w = writer(rx, LONG, |&i| i == 99);
        // The first rings the idle writer; the rest find it rung, and the
        // urgent one is not the last.
        tx.send(0, false).unwrap();
        tx.send(99, true).unwrap();
        tx.send(1, false).unwrap();
        let (batch, _) = taken(&w, "the urgent request was missed and the writer lingered");
        let batch = batch.unwrap();
        assert!(batch == [0, 99, 1] || batch == [0, 99], "{batch:?}");
    }

    #[test]
    fn a_batch_filling_up_while_the_writer_lingers_ends_the_wait() {
        let (tx, rx) = inbox::<u32>(4);
        let w = writer(rx, LONG, |_| false);
        tx.send(0, false).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for i in 1..6 {
            tx.send(i, false).unwrap();
        }
        let (batch, rx) = taken(&w, "a full batch did not end the wait");
        assert_eq!(batch, Some(vec![0, 1, 2, 3]));
        // The rest waits for its own deadline, or (here) for the senders to go.
        drop(tx);
        assert_eq!(rx.next_batch(LONG, |_| false), Some(vec![4, 5]));
        assert_eq!(rx.next_batch(LONG, |_| false), None);
    }

    #[test]
    fn requests_from_many_senders_keep_each_senders_order() {
        let (tx, rx) = inbox::<u32>(64);
        let senders: Vec<_> = (0..4u32)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        tx.send(s * 10_000 + i, i % 97 == 0).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        for s in senders {
            s.join().unwrap();
        }
        let mut all = Vec::new();
        while let Some(batch) = rx.next_batch(LONG, |&i| i % 10_000 % 97 == 0) {
            all.extend(batch);
        }
        assert_eq!(all.len(), 4000);
        for s in 0..4 {
            let mine: Vec<u32> = all.iter().copied().filter(|i| i / 10_000 == s).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "sender {s}'s requests were reordered");
        }
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
