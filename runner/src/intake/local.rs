//! `edge-runner exec` on a host where the runner already serves: the
//! command hands its run to the serving process instead of opening the
//! evidence store itself (which that process holds locked).
//!
//! ```text
//! exec ── config, capsule, approvals read ──► <state>/exec.sock ──► serve
//!         (governance digests of the file)     same user only        same governance? run it
//!                                                                    as exec would; answer
//! ◄── the report exec prints, its exit code ──────────────────────────┘
//! ```
//!
//! - **Who may.** The socket is created mode 0600 in the state directory,
//!   and a connection is served only if the kernel says its process runs as
//!   the runner's own user (`SO_PEERCRED`): someone who may write the state
//!   directory and read the identity key, who could run `exec` without the
//!   runner anyway. `exec` in turn checks that the process answering runs
//!   as its own user.
//! - **Under which governance.** The run takes the governance in force in
//!   the serving runner, so `exec` sends the digests of every governing
//!   document its `--config` names (as loaded: the file, policy, graph,
//!   signers, approvers, roles, passkeys, trusted root). If any differs,
//!   nothing runs and the answer names what differs and how to reload: the
//!   run is never governed by other documents than the ones the operator
//!   pointed at.
//! - **The same run.** The run is the one `exec` would make (no agent
//!   named, the same records, its receipt file in `<state>/receipts`), and
//!   it takes a slot like any submission: it waits for one, and is refused
//!   when the queue is full or the runner is stopping. A waiting proposal
//!   keeps its capsule, as a submission's does.
//! - **Bounded.** One request per connection, sent within
//!   [`REQUEST_TIMEOUT`], a header of at most [`MAX_HEADER_BYTES`], a
//!   capsule of at most [`MAX_CAPSULE_FILE_BYTES`], at most
//!   [`MAX_APPROVALS`] approvals of at most [`MAX_APPROVAL_BYTES`] each;
//!   [`MAX_CONNECTIONS`] at once.
//!
//! The wire format (this binary talks to itself; the version is checked):
//! the magic line [`MAGIC`], then a header (4-byte big-endian length and
//! JSON [`Request`]), then the capsule's bytes and each approval's. The
//! answer is one frame (length and JSON [`Answer`]).

use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use edge_core::evidence::ConfigDigests;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::cli::Exit;
use crate::config::RunnerConfig;
use crate::pipeline::{ExecInputs, MAX_CAPSULE_FILE_BYTES};
use crate::server::accept::accept_loop;
use crate::server::probes::{SocketFile, SocketPath, inspect_socket_path};
use crate::service::{QueueError, RunService};

/// The socket's name in the state directory.
pub const SOCKET_NAME: &str = "exec.sock";
/// First line of a request; a runner of another version refuses it.
pub const MAGIC: &[u8] = b"edge-runner exec 1\n";
/// Time to send a whole request (the answer waits for the run).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request header.
pub const MAX_HEADER_BYTES: u32 = 64 << 10;
/// Most approval files one request carries.
pub const MAX_APPROVALS: usize = 64;
/// Largest approval file a request carries (an approval is ~1 KiB; the
/// run refuses one over 64 KiB, and records that it did).
pub const MAX_APPROVAL_BYTES: u64 = 1 << 20;
/// Largest answer `exec` reads (a report with every record of a run).
const MAX_ANSWER_BYTES: u32 = 256 << 20;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest Unix socket path (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What `exec` asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Print the report as JSON (`exec --json`).
    pub json: bool,
    /// Every governing document `exec`'s config names, by digest.
    pub governance: ConfigDigests,
    /// The capsule file's length (its bytes follow the header).
    pub capsule: u64,
    /// Each approval file's length (their bytes follow the capsule's).
    pub approvals: Vec<u64>,
}

/// What the serving runner answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// The exit code `exec` ends with ([`Exit`]).
    pub exit: u8,
    /// What `exec` prints on its standard output: the report.
    pub out: String,
    /// Why nothing was reported (then `exit` is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where the socket of the runner serving `state_dir` is.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// A bound hand-over socket; its file is removed when this is dropped.
#[derive(Debug)]
pub struct Listener {
    listener: tokio::net::UnixListener,
    _file: SocketFile,
}

/// Bind the hand-over socket in `state_dir`, replacing a stale one an
/// earlier process left (the caller holds the evidence store's lock, so no
/// other runner of this state directory is alive). `None`, with a warning,
/// when the path is too long for a Unix socket.
///
/// # Errors
/// The socket cannot be created, or its path holds something else.
pub fn bind(state_dir: &Path) -> Result<Option<Listener>> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::path::absolute(socket_path(state_dir))
        .with_context(|| format!("cannot resolve {}", state_dir.display()))?;
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        tracing::warn!(path = %path.display(), "the state directory's path is too long for a Unix socket: \
            `edge-runner exec` cannot hand runs to this runner (it says the store is in use)");
        return Ok(None);
    }
    match inspect_socket_path(&path).with_context(|| format!("cannot inspect {}", path.display()))? {
        SocketPath::Free => {}
        // Ours, from a process that ended without removing it (the store's
        // lock says no other runner of this state directory is alive).
        SocketPath::Stale | SocketPath::Live => {
            std::fs::remove_file(&path).with_context(|| format!("cannot remove the stale {}", path.display()))?;
        }
        SocketPath::NotASocket(kind) => bail!(
            "{} is a {kind}, where the runner makes the socket `edge-runner exec` hands runs to: move it away",
            path.display()
        ),
    }
    // The mode is set at once; until then the default mask leaves it
    // unwritable by others (connecting needs write permission), and each
    // connection's user is checked besides.
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot create the exec socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set mode 0600 on {}", path.display()))?;
    Ok(Some(Listener { listener, _file: SocketFile::new(path)? }))
}

/// Serve hand-overs on `listener` until `shutdown`; runs already handed
/// over finish (they are the service's tasks) and their answers are sent.
pub async fn serve(listener: Listener, runs: Arc<RunService>, shutdown: impl std::future::Future<Output = ()>) {
    let open = accept_loop("exec", &listener.listener, MAX_CONNECTIONS, shutdown, |io, _| {
        let runs = runs.clone();
        async move { connection(io, runs).await }
    })
    .await;
    let mut open = open;
    while open.join_next().await.is_some() {}
    drop(listener);
}

async fn connection(mut io: tokio::net::UnixStream, runs: Arc<RunService>) {
    let answer = match answer(&mut io, &runs).await {
        Ok(a) => a,
        Err(e) => Answer { exit: Exit::Error as u8, out: String::new(), error: Some(format!("{e:#}")) },
    };
    let Ok(body) = serde_json::to_vec(&answer) else { return };
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    // A client gone before its answer: the run is recorded either way.
    if let Err(e) = io.write_all(&frame).await {
        tracing::info!(error = %e, "exec went away before its answer");
    }
}

async fn answer(io: &mut tokio::net::UnixStream, runs: &Arc<RunService>) -> Result<Answer> {
    same_user(io.as_raw_fd())?;
    let (request, inputs) = tokio::time::timeout(REQUEST_TIMEOUT, read_request(io))
        .await
        .map_err(|_| anyhow!("the request was not sent within {} s", REQUEST_TIMEOUT.as_secs()))??;
    let runner = runs.runner();
    let in_force = runner.governance().digests();
    if request.governance != in_force {
        let differ = differences(&request.governance, &in_force);
        bail!(
            "the runner serving {} governs with other documents than your --config names ({}): nothing ran. \
             Reload it to put the file in force (`kill -HUP <pid>`, `systemctl reload edge-runner`, or POST \
             /v1/reload), or pass the config it runs",
            runner.config.state_dir.display(),
            differ.join(", ")
        );
    }
    let report = match runs.exec_local(inputs.capsule, inputs.approvals).await {
        Ok(r) => r?,
        Err(QueueError::Full) => bail!("the runner's run queue is full: nothing ran; try again shortly"),
        Err(QueueError::Stopped) => {
            bail!("the runner is shutting down: nothing ran; run exec again once it has stopped")
        }
    };
    let mut out = Vec::new();
    let exit = crate::cli::exec_answer(&report, request.json, &mut out)?;
    Ok(Answer { exit: exit as u8, out: String::from_utf8_lossy(&out).into_owned(), error: None })
}

/// Refuse a connection whose process runs as another user than this one.
fn same_user(fd: std::os::fd::RawFd) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let peer = peer_uid(fd).context("cannot read the connecting process's user")?;
    if peer != me {
        tracing::warn!(uid = peer, "exec hand-over refused: another user");
        bail!(
            "this runner runs as uid {me} and takes runs from `edge-runner exec` run by that user only (you are uid \
             {peer}): run it as that user, e.g. `sudo -u <runner's user> edge-runner exec …`"
        );
    }
    Ok(())
}

/// Which governing documents differ, by name.
fn differences(a: &ConfigDigests, b: &ConfigDigests) -> Vec<&'static str> {
    let pairs = [
        ("runner config", a.config != b.config),
        ("policy", a.policy != b.policy),
        ("graph", a.graph != b.graph),
        ("approver registry", a.registry != b.registry),
        ("allowed signers", a.allowed_signers != b.allowed_signers),
        ("roles", a.roles != b.roles),
        ("passkeys", a.passkeys != b.passkeys),
        ("trusted root", a.trusted_root != b.trusted_root),
    ];
    let named: Vec<_> = pairs.into_iter().filter(|(_, d)| *d).map(|(n, _)| n).collect();
    if named.is_empty() { vec!["the config as shown"] } else { named }
}

async fn read_request(io: &mut tokio::net::UnixStream) -> Result<(Request, ExecInputs)> {
    let mut magic = [0u8; MAGIC.len()];
    io.read_exact(&mut magic).await.context("reading the request")?;
    if magic != MAGIC {
        bail!("not an `edge-runner exec` request of this version: run the same edge-runner as the one serving");
    }
    let len = io.read_u32().await.context("reading the request")?;
    if len > MAX_HEADER_BYTES {
        bail!("a request header of {len} bytes; the largest is {MAX_HEADER_BYTES}");
    }
    let mut header = vec![0; len as usize];
    io.read_exact(&mut header).await.context("reading the request")?;
    let request: Request = serde_json::from_slice(&header).context("the request header does not parse")?;
    if request.capsule > MAX_CAPSULE_FILE_BYTES {
        bail!("a capsule of {} bytes; the largest accepted is {MAX_CAPSULE_FILE_BYTES}", request.capsule);
    }
    if request.approvals.len() > MAX_APPROVALS || request.approvals.iter().any(|&n| n > MAX_APPROVAL_BYTES) {
        bail!("at most {MAX_APPROVALS} approvals of at most {MAX_APPROVAL_BYTES} bytes each");
    }
    let mut read = async |n: u64| -> Result<Vec<u8>> {
        let mut b = vec![0; n as usize];
        io.read_exact(&mut b).await.context("reading the request")?;
        Ok(b)
    };
    let capsule = read(request.capsule).await?;
    let mut approvals = Vec::with_capacity(request.approvals.len());
    for &n in &request.approvals {
        approvals.push(read(n).await?);
    }
    Ok((request, ExecInputs { capsule, approvals }))
}

/// The user a connected Unix socket's other end runs as (`SO_PEERCRED`).
fn peer_uid(fd: std::os::fd::RawFd) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Hand `inputs` to the runner serving `config`'s state directory, if one
/// does: `None` when none answers there (`exec` then runs it itself).
///
/// # Errors
/// An input is larger than a hand-over carries, the process answering
/// runs as another user, or the connection fails after it was made (the
/// run may then have happened: the error says where to look).
pub fn hand_over(config: &RunnerConfig, inputs: &ExecInputs, json: bool) -> Result<Option<Answer>> {
    let path = socket_path(&config.state_dir);
    match std::path::absolute(&path) {
        Ok(p) if p.as_os_str().len() <= MAX_SOCKET_PATH => {}
        _ => return Ok(None),
    }
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        // Nobody serves (no socket, or one left by a process that ended).
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot reach the runner serving at {}", path.display())),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let serving = peer_uid(stream.as_raw_fd()).context("cannot read the serving process's user")?;
    if serving != me {
        bail!(
            "the runner serving {} runs as uid {serving}, not as you (uid {me}): run `edge-runner exec` as that user",
            config.state_dir.display()
        );
    }
    let governance = config.governance.as_ref().context("a loaded config has its governance")?.digests();
    if inputs.approvals.len() > MAX_APPROVALS {
        bail!("at most {MAX_APPROVALS} approval files are taken at once; this run has {}", inputs.approvals.len());
    }
    if let Some(a) = inputs.approvals.iter().find(|a| a.len() as u64 > MAX_APPROVAL_BYTES) {
        bail!(
            "an approval file of {} bytes; the largest taken is {MAX_APPROVAL_BYTES} (an approval is ~1 KiB)",
            a.len()
        );
    }
    let request = Request {
        json,
        governance,
        capsule: inputs.capsule.len() as u64,
        approvals: inputs.approvals.iter().map(|a| a.len() as u64).collect(),
    };
    let header = serde_json::to_vec(&request)?;
    let lost = |e: std::io::Error| {
        anyhow!(e).context(format!(
            "the runner serving {} stopped answering: the run may have happened (its records are in the evidence \
             store: `edge-runner evidence export`)",
            config.state_dir.display()
        ))
    };
    let mut head = MAGIC.to_vec();
    head.extend_from_slice(&(header.len() as u32).to_be_bytes());
    head.extend_from_slice(&header);
    // A runner that refuses early (another user, other governance, a full
    // queue) answers and closes without reading the rest: its answer is
    // read even when sending failed.
    let sent = (|| -> std::io::Result<()> {
        stream.write_all(&head)?;
        stream.write_all(&inputs.capsule)?;
        inputs.approvals.iter().try_for_each(|a| stream.write_all(a))
    })();
    let body = match (read_answer(&mut stream), sent) {
        (Ok(body), _) => body,
        (Err(e), Ok(())) | (Err(_), Err(e)) => return Err(lost(e)),
    };
    let answer: Answer = serde_json::from_slice(&body).context("the runner's answer does not parse")?;
    Ok(Some(answer))
}

/// One answer frame, bounded by [`MAX_ANSWER_BYTES`].
fn read_answer(stream: &mut std::os::unix::net::UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_ANSWER_BYTES {
        return Err(std::io::Error::other(format!(
            "an answer of {len} bytes, more than the {MAX_ANSWER_BYTES} exec reads"
        )));
    }
    let mut body = vec![0; len as usize];
    stream.read_exact(&mut body)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt as _;

    /// A connection from a process of another user is refused by what the
    /// kernel says of it, whatever the socket file's mode allowed.
    #[test]
    fn a_connection_from_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: changing to another user needs root");
            return;
        }
        // An abstract socket: no file permission stands in the way, so only
        // the user check can refuse.
        let name = format!("edge-runner-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        // The child only makes system calls (fork in a threaded process):
        // everything it needs is built before.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, b) in name.bytes().enumerate() {
            sa.sun_path[i + 1] = b as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
        // SAFETY: the child calls only async-signal-safe functions and
        // leaves with `_exit`.
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                let ok = libc::setgid(65534) == 0 && libc::setuid(65534) == 0;
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let connected = ok && libc::connect(fd, (&raw const sa).cast(), len) == 0;
                let mut b = [0u8; 1];
                libc::read(fd, b.as_mut_ptr().cast(), 1);
                libc::_exit(if connected { 0 } else { 1 });
            }
        }
        let (conn, _) = listener.accept().unwrap();
        let refused = same_user(conn.as_raw_fd()).unwrap_err().to_string();
        drop(conn);
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(child, &raw mut status, 0) };
        assert_eq!(libc::WEXITSTATUS(status), 0, "the child ran as uid 65534 and connected");
        assert!(refused.contains("runs as uid 0") && refused.contains("you are uid 65534"), "{refused}");
        // And this process, the same user, is let through.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        same_user(a.as_raw_fd()).unwrap();
    }

    #[test]
    fn differences_name_each_document_that_differs() {
        let d = |b: u8| edge_core::Sha256Digest::of(&[b]);
        let a = ConfigDigests {
            config: d(1),
            config_shown: Some(d(2)),
            policy: Some(d(3)),
            graph: None,
            registry: Some(d(4)),
            allowed_signers: None,
            roles: None,
            passkeys: None,
            trusted_root: None,
        };
        let mut b = a.clone();
        b.config_shown = Some(d(7));
        assert_eq!(differences(&a, &b), vec!["the config as shown"]);
        b.policy = None;
        b.config = d(9);
        assert_eq!(differences(&a, &b), vec!["runner config", "policy"]);
    }
}
