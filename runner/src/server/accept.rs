//! The one accept loop behind every listener `serve` opens: the mTLS API,
//! the approval console and the probe listener.
//!
//! Each accepted connection becomes its own task holding one of `max`
//! permits, so a listener serves at most `max` connections at once (more
//! wait in the kernel backlog). When `accept` fails — out of descriptors
//! (EMFILE/ENFILE) or memory — accepting again at once fails again and spins
//! a core: the loop backs off, 10 ms doubling to 1 s, and lets connections
//! finish. On shutdown it stops accepting and hands the connections still
//! open back to the caller, which decides how long they may go on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

/// First and longest pause after a failed `accept` (EMFILE, ENFILE, ENOMEM).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listening socket: TCP or Unix.
pub(crate) trait Accept {
    type Io: Send + 'static;
    type Peer: std::fmt::Debug + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Self::Peer)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    type Peer = std::net::SocketAddr;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Self::Peer)>> + Send {
        tokio::net::TcpListener::accept(self)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Self::Peer)>> + Send {
        tokio::net::UnixListener::accept(self)
    }
}

/// Accept on `listener` until `shutdown`, serving each connection with
/// `serve` as its own task, at most `max` at once. `what` names the
/// listener in logs. Returns the connections still running.
pub(crate) async fn accept_loop<L, F, Fut>(
    what: &'static str,
    listener: &L,
    max: usize,
    shutdown: impl Future<Output = ()>,
    mut serve: F,
) -> JoinSet<()>
where
    L: Accept,
    F: FnMut(L::Io, L::Peer) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("never closed"),
        };
        let (io, peer) = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    a
                }
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, backoff_ms = backoff.as_millis() as u64,
                        "accept failed; backing off");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        let connection = serve(io, peer);
        connections.spawn(async move {
            let _permit = permit;
            connection.await;
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    connections
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener whose `accept` fails a number of times first.
    struct Failing {
        inner: tokio::net::TcpListener,
        failures: std::sync::atomic::AtomicUsize,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Accept for Failing {
        type Io = tokio::net::TcpStream;
        type Peer = std::net::SocketAddr;
        async fn accept(&self) -> std::io::Result<(Self::Io, Self::Peer)> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            if self.failures.load(SeqCst) > 0 {
                self.failures.fetch_sub(1, SeqCst);
                return Err(std::io::Error::from_raw_os_error(24)); // EMFILE
            }
            self.inner.accept().await
        }
    }

    /// Failing accepts back off instead of spinning; connections beyond
    /// `max` wait for a permit; shutdown returns the open connections.
    #[tokio::test]
    async fn failed_accepts_back_off_and_connections_are_bounded() {
        use std::sync::atomic::Ordering::SeqCst;
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let l = Arc::new(Failing {
            inner,
            failures: std::sync::atomic::AtomicUsize::new(5),
            calls: std::sync::atomic::AtomicUsize::new(0),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (release, _) = tokio::sync::broadcast::channel::<()>(1);
        let task = tokio::spawn({
            let (l, served, release) = (l.clone(), served.clone(), release.clone());
            async move {
                accept_loop(
                    "test",
                    &*l,
                    2,
                    async {
                        let _ = stopped.await;
                    },
                    move |_io, _peer| {
                        served.fetch_add(1, SeqCst);
                        let mut r = release.subscribe();
                        async move {
                            let _ = r.recv().await;
                        }
                    },
                )
                .await
            }
        });
        // Five failures take 10+20+40+80+160 ms of backoff: a handful of
        // calls in 400 ms, not the thousands a spinning loop makes.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let calls = l.calls.load(SeqCst);
        assert!((5..=6).contains(&calls), "{calls} accept calls: the loop spun instead of backing off");
        let _clients: Vec<_> = futures_connect(addr, 3)
            .await
            .into_iter()
            .map(|c| c.expect("the kernel accepts into the backlog"))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(served.load(SeqCst), 2, "at most two connections are served at once");
        let _ = release.send(());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(served.load(SeqCst), 3, "the third is served once a permit is free");
        stop.send(()).unwrap();
        let open = task.await.unwrap();
        assert!(open.len() <= 1, "only the third connection can still be open");
    }

    async fn futures_connect(addr: std::net::SocketAddr, n: usize) -> Vec<std::io::Result<tokio::net::TcpStream>> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(tokio::net::TcpStream::connect(addr).await);
        }
        v
    }
}
