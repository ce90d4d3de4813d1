//! Operational logs: what an operator reads in the journal. The evidence log
//! is the record of what happened; these lines are for watching and
//! troubleshooting a running service, and are best effort.
//!
//! * **Format.** JSON lines when standard error is not a terminal (the
//!   journal, a file, a pipe), text on a terminal; `EDGE_RUNNER_LOG_FORMAT`
//!   (`json`, `text`, `auto`) overrides.
//! * **Level.** `EDGE_RUNNER_LOG` takes a filter (`info`,
//!   `edge_runner::access=warn,info`, …); the default is `info` for `serve`
//!   and `warn` for the other commands.
//! * **`serve` never blocks on its log.** Its lines go through a bounded
//!   queue to a writer thread; when standard error cannot keep up (a
//!   stalled pipe), lines are dropped rather than stalling the evidence
//!   writer or a request. The evidence log is never lossy; the operational
//!   log may be. The other commands write their few lines (warnings, at
//!   the default level) directly: a thread more to start and stop was a
//!   tenth of a short command's time beyond its work. A stalled standard
//!   error stalls such a command, as any command-line tool; one that
//!   cannot be written (a closed pipe, a full disk) loses the line and the
//!   command goes on.
//! * **Neutralised.** Every byte goes through [`edge_core::text::Terminal`]:
//!   control characters, escape sequences and bidi overrides from capsule
//!   or client text come out as `\uXXXX` (valid inside JSON strings too).
//!   The logger writes no colour codes of its own.
//! * **No secrets.** Lines carry identities, paths without query strings,
//!   statuses, digests, reason codes and timings — never approval bodies,
//!   keys, session cookies or enrollment codes.
//!
//! Targets an operator can filter on: `edge_runner::access` (one line per
//! HTTP request), `edge_runner::run` (one line per evidence record of a run
//! — every transition — and one when a run finishes, with its timings).

use std::io::IsTerminal as _;

use edge_core::text::Terminal;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Lines queued for standard error before new ones are dropped.
const QUEUE_LINES: usize = 16_384;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

impl Format {
    /// `EDGE_RUNNER_LOG_FORMAT`, else JSON unless standard error is a terminal.
    ///
    /// # Errors
    /// An unknown value (named, with the valid ones).
    pub fn from_env(stderr_is_terminal: bool) -> Result<Self, String> {
        match std::env::var("EDGE_RUNNER_LOG_FORMAT").ok().as_deref().map(str::trim) {
            None | Some("" | "auto") => Ok(if stderr_is_terminal { Self::Text } else { Self::Json }),
            Some("json") => Ok(Self::Json),
            Some("text") => Ok(Self::Text),
            Some(other) => Err(format!(
                "EDGE_RUNNER_LOG_FORMAT=`{}` is not a log format: use json, text or auto",
                edge_core::text::line(other)
            )),
        }
    }
}

/// Install the process's logger. `serve` logs at `info` by default, the
/// other commands at `warn`. Keep the guard until the process ends: dropping
/// it writes out what is queued (`serve`'s; the other commands have none).
pub fn init(serving: bool) -> Option<WorkerGuard> {
    let terminal = std::io::stderr().is_terminal();
    let (format, bad_format) = match Format::from_env(terminal) {
        Ok(f) => (f, None),
        Err(e) => (if terminal { Format::Text } else { Format::Json }, Some(e)),
    };
    let default = if serving { "info" } else { "warn" };
    let (filter, bad_filter) = match std::env::var("EDGE_RUNNER_LOG") {
        Ok(v) if !v.trim().is_empty() => match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (
                tracing_subscriber::EnvFilter::new(default),
                Some(format!(
                    "EDGE_RUNNER_LOG=`{}` is not a log filter ({e}); using `{default}`",
                    edge_core::text::line(&v)
                )),
            ),
        },
        _ => (tracing_subscriber::EnvFilter::new(default), None),
    };
    let (writer, guard) = writer(serving, std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(writer);
    match format {
        Format::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
        Format::Text => builder.init(),
    }
    for problem in [bad_format, bad_filter].into_iter().flatten() {
        tracing::warn!("{problem}");
    }
    guard
}

/// Where the lines go: `serve`'s through a queue to a writer thread, the
/// other commands' directly. Both neutralise what they write and keep each
/// event on one line.
fn writer<W: std::io::Write + Send + 'static>(serving: bool, sink: W) -> (BoxMakeWriter, Option<WorkerGuard>) {
    let sink = OneLinePerEvent(Terminal::new(sink));
    if serving {
        let (writer, guard) = NonBlockingBuilder::default().buffered_lines_limit(QUEUE_LINES).lossy(true).finish(sink);
        (BoxMakeWriter::new(writer), Some(guard))
    } else {
        (BoxMakeWriter::new(Direct(std::sync::Mutex::new(sink))), None)
    }
}

/// Lines written directly, one event at a time. A line that cannot be
/// written is lost, not reported: the formatter would report it on standard
/// error itself (`eprintln!`, which panics when that is what failed), and
/// the evidence writer thread logs too.
struct Direct<W>(std::sync::Mutex<W>);

/// One event's hold on a [`Direct`] writer.
struct DirectEvent<'a, W>(std::sync::MutexGuard<'a, W>);

impl<'a, W: std::io::Write + 'a> tracing_subscriber::fmt::MakeWriter<'a> for Direct<W> {
    type Writer = DirectEvent<'a, W>;
    fn make_writer(&'a self) -> Self::Writer {
        // Writing cannot panic while it holds the lock (errors are dropped),
        // but a poisoned lock would not stop logging either.
        DirectEvent(self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl<W: std::io::Write> std::io::Write for DirectEvent<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _lost = self.0.write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _lost = self.0.flush();
        Ok(())
    }
}

/// Every event on one line: the writer thread hands over each event whole
/// (one `write_all` per event), and a line break inside it — a multi-line
/// error, or a value a client chose — would start a line that looks like
/// an event of its own. Breaks inside become `\n` (and `\r`); the last
/// byte's line end stays. (JSON escapes them itself; this is for text.)
struct OneLinePerEvent<W>(W);

impl<W: std::io::Write> std::io::Write for OneLinePerEvent<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.split_last() {
            Some((b'\n', body)) => (body, &b"\n"[..]),
            _ => (buf, &b""[..]),
        };
        if !body.iter().any(|b| matches!(b, b'\n' | b'\r')) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(b),
            }
        }
        out.extend_from_slice(end);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// One line per durable evidence record of a run (every transition:
/// submission, admission, decision, awaiting approval, approvals, plan,
/// apply, commit, verify, rollback, refusal, completion), from the evidence
/// writer once the record is durable. Names the run and the proposal, the
/// tier and reason code where the record has them; never capsule text.
pub fn record(r: &edge_core::evidence::Record) {
    use edge_core::evidence::Event;
    if !tracing::enabled!(target: "edge_runner::run", tracing::Level::INFO) {
        return;
    }
    let proposal = match &r.event {
        Event::AwaitingApproval { proposal, .. }
        | Event::ApprovalReceived { proposal, .. }
        | Event::Quorum { proposal, .. }
        | Event::ProposalExpired { proposal, .. }
        | Event::Resumed { proposal, .. }
        | Event::NotificationFailed { proposal, .. } => Some(proposal.clone()),
        _ if r.run.starts_with("r-") => Some(edge_core::lifecycle::proposal_id(&r.run)),
        _ => None,
    };
    let (tier, reason_code, outcome) = match &r.event {
        Event::Decision { decision, .. } => (Some(decision.tier), None, None),
        Event::Authorized { tier, .. } => (Some(*tier), None, None),
        Event::Refused { reason_code, .. }
        | Event::RolledBack { reason_code, .. }
        | Event::ApprovalRefused { reason_code, .. } => (None, Some(reason_code.as_str()), None),
        Event::Completed { outcome } => (None, None, serde_json::to_value(outcome).ok()),
        _ => (None, None, None),
    };
    tracing::info!(
        target: "edge_runner::run",
        seq = r.seq,
        run = %r.run,
        proposal = proposal.as_deref(),
        event = r.event_type(),
        tier,
        reason_code,
        outcome = outcome.as_ref().and_then(serde_json::Value::as_str),
        "recorded"
    );
}

/// The longest request path an access line keeps (longer ones are cut and
/// marked): a client cannot make one request write a megabyte of log.
const MAX_LOGGED_PATH: usize = 256;

/// The access log: one line per HTTP request on `listener` (`api`,
/// `console`, `probes`), after the answer is ready. The path without its
/// query string (queries can carry anything), cut to a bounded length;
/// `identity` is the authenticated client certificate's identity, if any.
pub fn access(
    listener: &'static str,
    peer: std::net::SocketAddr,
    identity: Option<&str>,
    method: &hyper::Method,
    path: &str,
    status: hyper::StatusCode,
    started: std::time::Instant,
) {
    let path = match path.char_indices().nth(MAX_LOGGED_PATH) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path.to_owned(),
    };
    tracing::info!(
        target: "edge_runner::access",
        listener,
        %peer,
        identity,
        method = method.as_str(),
        path = %edge_core::text::line(&path),
        status = status.as_u16(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::OneLinePerEvent;

    fn written(events: &[&str]) -> String {
        let mut w = OneLinePerEvent(Vec::new());
        for e in events {
            w.write_all(e.as_bytes()).unwrap();
        }
        String::from_utf8(w.0).unwrap()
    }

    /// A sink the test reads back.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Standard error that cannot be written (`2>/dev/full`, a closed pipe).
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(28))
        }
    }

    fn log_with(w: tracing_subscriber::fmt::writer::BoxMakeWriter, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(w).finish();
        tracing::subscriber::with_default(subscriber, f);
    }

    #[test]
    fn a_command_writes_each_event_directly_neutralised_and_goes_on_when_it_cannot() {
        let sink = Shared::default();
        let (w, guard) = super::writer(false, sink.clone());
        assert!(guard.is_none(), "a writer thread for a command other than serve");
        let hostile = "rotate\u{1b}[2J\u{1b}]0;approved\u{7} \u{202e}txt.exe\nINFO forged line";
        log_with(w, || {
            tracing::warn!("{hostile}");
            tracing::warn!("next");
        });
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        for raw in ['\u{1b}', '\u{7}', '\u{202e}'] {
            assert!(!out.contains(raw), "{raw:?} written raw: {out:?}");
        }
        assert!(out.contains("rotate") && out.contains("txt.exe\\nINFO forged line"), "{out:?}");
        // Written at once: no queue to drain.
        assert!(out.lines().nth(1).is_some_and(|l| l.ends_with("next")), "{out:?}");

        // Standard error that fails: lines are lost, nothing panics, and
        // logging goes on.
        let (w, _) = super::writer(false, Broken);
        log_with(w, || {
            tracing::warn!("lost");
            tracing::error!("lost too");
        });
    }

    #[test]
    fn a_line_break_inside_an_event_cannot_forge_another_line() {
        let forged = "INFO request path=/x error=no\nINFO edge_runner::run: run finished outcome=committed\n";
        let out = written(&[forged, "INFO next\n"]);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.starts_with("INFO request path=/x error=no\\nINFO edge_runner::run"), "{out}");
        assert_eq!(written(&["a\r\nb"]), "a\\r\\nb");
        assert_eq!(written(&["plain\n", "json {}\n"]), "plain\njson {}\n");
    }
}
