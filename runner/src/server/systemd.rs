//! The systemd notification protocol (`sd_notify(3)`), spoken directly: a
//! datagram of `KEY=value` lines to the Unix socket named by `NOTIFY_SOCKET`
//! (a path, or `@name` for an abstract address). No libsystemd.
//!
//! What `serve` tells the service manager:
//!
//! ```text
//!  READY=1, STATUS=…        every listener bound and the runner open
//!  WATCHDOG=1               every WATCHDOG_USEC/2, only while the readiness
//!                           check passes (a failed or wedged evidence writer
//!                           stops the pings, and systemd restarts the runner)
//!  RELOADING=1, MONOTONIC_USEC=…   SIGHUP received; READY=1 once the reload
//!                           is applied or refused
//!  STOPPING=1               SIGTERM/SIGINT: the runs in progress finish
//! ```
//!
//! Without `NOTIFY_SOCKET` every call is a no-op. A message that cannot be
//! sent is logged, never fatal: the runner works without a service manager.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::service::RunService;

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    /// An abstract socket address (`@name` in `NOTIFY_SOCKET`), without the `@`.
    Abstract(Vec<u8>),
}

/// A handle on the service manager (or on nothing, outside systemd).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Target>,
    /// The watchdog timeout (`WATCHDOG_USEC`) when it applies to this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Outside a service manager: every call does nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// From this process's environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok();
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            var("WATCHDOG_USEC"),
            var("WATCHDOG_PID"),
            std::process::id(),
        )
    }

    /// As [`Notifier::from_env`], from the variables' values and our pid.
    /// Malformed values are logged and ignored, as `sd_notify` does.
    pub fn from_vars(
        notify_socket: Option<OsString>,
        watchdog_usec: Option<String>,
        watchdog_pid: Option<String>,
        pid: u32,
    ) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        let target = notify_socket.and_then(|s| {
            let b = s.as_bytes();
            match b.first() {
                Some(b'/') => Some(Target::Path(PathBuf::from(s))),
                Some(b'@') if b.len() > 1 => Some(Target::Abstract(b[1..].to_vec())),
                _ => {
                    tracing::warn!(value = ?s, "NOTIFY_SOCKET is neither an absolute path nor @abstract; not notifying");
                    None
                }
            }
        });
        // The watchdog is ours when WATCHDOG_PID is unset or names us.
        let ours = watchdog_pid.as_deref().is_none_or(|p| p.trim().parse::<u32>().ok() == Some(pid));
        let watchdog = match watchdog_usec.as_deref().map(|u| u.trim().parse::<u64>()) {
            Some(Ok(usec)) if usec > 0 && ours && target.is_some() => Some(Duration::from_micros(usec)),
            Some(Err(_)) => {
                tracing::warn!(value = ?watchdog_usec, "WATCHDOG_USEC is not a number of microseconds; no watchdog");
                None
            }
            _ => None,
        };
        Self { target, watchdog }
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often the watchdog is pinged (half its timeout), when it is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Send `state` (newline-separated `KEY=value` lines).
    pub fn notify(&self, state: &str) {
        let Some(target) = &self.target else { return };
        if let Err(e) = send(target, state.as_bytes()) {
            tracing::warn!(error = %e, state = %state.lines().next().unwrap_or(""), "cannot notify systemd");
        }
    }

    /// Every listener is bound and the runner open.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A reload begins (`READY=1` follows when it is over).
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// Shutting down.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// Ping the watchdog every half timeout while `runs` passes its health
    /// check: the readiness check while it serves, the evidence writer's
    /// health while it shuts down (runs in progress still write evidence).
    /// `None` when there is no watchdog.
    pub fn spawn_watchdog(&self, runs: Arc<RunService>) -> Option<tokio::task::AbortHandle> {
        let every = self.watchdog_interval()?;
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                // The evidence writer, not readiness: an intake that cannot
                // reach its server (NATS away) is no reason to restart.
                let check = runs
                    .runner()
                    .log
                    .writer_health(crate::server::health::WRITER_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string());
                match check {
                    Ok(()) => {
                        me.notify("WATCHDOG=1");
                        if std::mem::take(&mut failing) {
                            tracing::info!("healthy again: watchdog pings resumed");
                            me.notify("STATUS=serving (healthy again)");
                        }
                    }
                    Err(why) => {
                        tracing::error!(reason = %why, "unhealthy: withholding the watchdog ping (systemd restarts the runner when its WatchdogSec passes)");
                        me.notify(&format!("STATUS=unhealthy: {}", one_line(&why)));
                        failing = true;
                    }
                }
            }
        });
        Some(task.abort_handle())
    }
}

/// A status is one line.
fn one_line(s: &str) -> String {
    edge_core::text::line(s).into_owned()
}

fn send(target: &Target, msg: &[u8]) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    // The manager reads promptly; never hang the runner on a full queue.
    sock.set_write_timeout(Some(Duration::from_secs(1)))?;
    let sent = match target {
        Target::Path(p) => sock.send_to(msg, p)?,
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg, &addr)?
        }
    };
    if sent != msg.len() {
        return Err(std::io::Error::other(format!("sent {sent} of {} bytes", msg.len())));
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC` wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64).saturating_mul(1_000_000).saturating_add(ts.tv_nsec as u64 / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &std::os::unix::net::UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::from_vars(Some(path.clone().into()), None, None, 1);
        assert!(n.enabled() && n.watchdog_interval().is_none());
        n.ready("serving on https://127.0.0.1:8443");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving on https://127.0.0.1:8443");
        n.reloading();
        let r = recv(&sock);
        let usec: u64 = r.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").unwrap().parse().unwrap();
        assert!(usec.abs_diff(monotonic_usec()) < 10_000_000, "{usec}");
        n.stopping("stopping\nnow");
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=stopping\\nnow", "a status stays one line (neutralised)");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("edge-runner-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abs = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        abs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::from_vars(Some(format!("@{name}").into()), None, None, 1).notify("WATCHDOG=1");
        assert_eq!(recv(&abs), "WATCHDOG=1");
    }

    #[test]
    fn the_watchdog_is_ours_only_when_set_for_our_pid() {
        let sock = || Some(OsString::from("/run/systemd/notify"));
        let usec = || Some("30000000".to_owned());
        let n = Notifier::from_vars(sock(), usec(), None, 42);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)), "half of WATCHDOG_USEC");
        assert!(Notifier::from_vars(sock(), usec(), Some("42".into()), 42).watchdog_interval().is_some());
        assert!(Notifier::from_vars(sock(), usec(), Some("43".into()), 42).watchdog_interval().is_none());
        assert!(Notifier::from_vars(sock(), Some("soon".into()), None, 42).watchdog_interval().is_none());
        assert!(Notifier::from_vars(sock(), Some("0".into()), None, 42).watchdog_interval().is_none());
        assert!(Notifier::from_vars(None, usec(), None, 42).watchdog_interval().is_none(), "nowhere to ping");
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        for v in [None, Some(OsString::from("relative/path")), Some(OsString::from("@")), Some(OsString::new())] {
            let n = Notifier::from_vars(v.clone(), None, None, 1);
            assert!(!n.enabled(), "{v:?}");
            n.ready("x"); // a no-op, not a panic
        }
        assert!(!Notifier::disabled().enabled());
    }
}
