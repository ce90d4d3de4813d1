//! `edge-runner exec` on a host where the runner already serves: the
//! command hands its run to the serving process instead of opening the
//! evidence store itself (which that process holds locked).
//!
//! ```text
//! exec ── config, capsule, approvals read ──► <state>/exec.sock ──► serve
//!         the store's lock file, opened       same user, may write   same binary, same
//!         read-write, passed along            the store?             governance? run it
//!                                                                    as exec would; answer
//! ◄── the report exec prints, its exit code ──────────────────────────┘
//! ```
//!
//! - **Who may.** The socket is created mode 0600 in the state directory
//!   (which must be the runner's own and not writable by others), and a
//!   connection is served only if the kernel says its process runs as the
//!   runner's own user (`SO_PEERCRED`) *and* it passes, with its request,
//!   the store's lock file opened for writing (`SCM_RIGHTS`; the runner
//!   checks it is that file and writable). So only a process that could
//!   open the store itself — and run `exec` without the runner — may hand
//!   a run over: not one of the runner's user confined to reading (a
//!   read-only mount, a sandboxed exporter). `exec` in turn checks that the
//!   process answering runs as its own user.
//! - **Under which governance.** `exec` sends the digests of every
//!   governing document its `--config` names (as loaded: the file, policy,
//!   graph, signers and their keys, approvers, roles, passkeys, trusted
//!   root) and of what of the file only a restart applies (mounts,
//!   endpoints, limits, switches…). The run takes the governance in force
//!   in the serving runner once it has a run slot; if that is not what
//!   `exec` named, or the runner started from another file than `exec`'s in
//!   what a reload does not apply, nothing runs and the answer names what
//!   differs: the run is never governed by other documents than the ones
//!   the operator pointed at.
//! - **The same program.** The request names the version and revision of
//!   `edge-runner` that sends it; a serving runner of another refuses it
//!   (an upgrade installed, the runner not yet restarted).
//! - **The same run.** The run is the one `exec` would make (no agent
//!   named, the same records, its receipt file in `<state>/receipts`), and
//!   it takes a slot like any submission: it waits for one, and is refused
//!   when the queue is full or the runner is stopping. A waiting proposal
//!   keeps its capsule, as a submission's does.
//! - **Bounded.** One request per connection, sent within
//!   [`REQUEST_TIMEOUT`] (memory grows with what arrives, not with what is
//!   announced), a header of at most [`MAX_HEADER_BYTES`], a capsule of at
//!   most [`MAX_CAPSULE_FILE_BYTES`], at most [`MAX_APPROVALS`] approvals of
//!   at most [`MAX_APPROVAL_BYTES`] each; [`MAX_CONNECTIONS`] at once; the
//!   answer written within [`ANSWER_TIMEOUT`].
//!
//! The wire format (this binary talks to itself; the version is checked):
//! the magic line [`MAGIC`] (sent with the lock file's descriptor), then a
//! header (4-byte big-endian length and JSON [`Request`]), then the
//! capsule's bytes and each approval's. The answer is one frame (length and
//! JSON [`Answer`]).

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use edge_core::Sha256Digest;
use edge_core::evidence::ConfigDigests;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::cli::Exit;
use crate::config::{HandOverView, RunnerConfig};
use crate::governance::Governance;
use crate::pipeline::{ExecInputs, MAX_CAPSULE_FILE_BYTES};
use crate::server::accept::accept_loop;
use crate::server::probes::{SocketFile, SocketPath, inspect_socket_path};
use crate::service::{QueueError, RunService};

/// The socket's name in the state directory.
pub const SOCKET_NAME: &str = "exec.sock";
/// First line of a request: the protocol (the program's version is in the
/// header).
pub const MAGIC: &[u8] = b"edge-runner exec 2\n";
/// Time to send a whole request (the answer waits for the run).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to take the answer once it is ready.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request header.
pub const MAX_HEADER_BYTES: u32 = 64 << 10;
/// Most approval files one request carries.
pub const MAX_APPROVALS: usize = 64;
/// Largest approval file a request carries (an approval is ~1 KiB; the
/// run refuses one over 64 KiB, and records that it did).
pub const MAX_APPROVAL_BYTES: u64 = 1 << 20;
/// Largest answer (a report with every record of a run).
const MAX_ANSWER_BYTES: u32 = 256 << 20;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest Unix socket path (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Read at most this much of an announced body before more has arrived.
const READ_AHEAD: u64 = 1 << 20;

/// What `exec` asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The sending program: `edge-runner <version> (<revision>)`.
    pub program: String,
    /// Print the report as JSON (`exec --json`).
    pub json: bool,
    /// Every governing document `exec`'s config names, by digest.
    pub governance: ConfigDigests,
    /// The trusted signers it names, keys included ([`signers_digest`]).
    pub signers: Sha256Digest,
    /// What of its config only a restart applies ([`RunnerConfig::fixed`]).
    pub fixed: Sha256Digest,
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

/// This program, as a request names it.
fn program() -> String {
    format!("edge-runner {} ({})", crate::attest::VERSION, crate::attest::REVISION)
}

/// Where the socket of the runner serving `state_dir` is.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// The store's lock file ([`crate::store::log::lock_path`]), which a
/// process that writes the store opens read-write.
fn lock_path(state_dir: &Path) -> PathBuf {
    crate::store::log::lock_path(&state_dir.join("evidence"))
}

/// The trusted signers as one digest: each one's name and key as evidence
/// names them, in order (a key file replaced on disk changes it).
pub fn signers_digest(signers: &edge_core::signature::TrustedSigners) -> Sha256Digest {
    let mut bytes = Vec::new();
    for s in signers.signers() {
        for part in [s.name().to_owned(), s.evidence_key()] {
            bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
    }
    Sha256Digest::of(&bytes)
}

/// A bound hand-over socket; its file is removed when this is dropped.
#[derive(Debug)]
pub struct Listener {
    listener: tokio::net::UnixListener,
    _file: SocketFile,
    own: Own,
}

/// What a request is checked against: this runner's own.
#[derive(Debug, Clone, Copy)]
struct Own {
    /// The store's lock file (device, inode), which a request must pass.
    lock: (u64, u64),
    /// What of its config only a restart applies ([`RunnerConfig::fixed`]).
    fixed: Sha256Digest,
}

/// Bind the hand-over socket in `config`'s state directory, replacing a stale one an
/// earlier process left (the caller holds the evidence store's lock, so no
/// other runner of this state directory is alive). `None`, with a warning,
/// when the path is too long for a Unix socket or the directory is not
/// this user's alone.
///
/// # Errors
/// The socket cannot be created, or its path holds something else.
pub fn bind(config: &RunnerConfig) -> Result<Option<Listener>> {
    let state_dir = config.state_dir.as_path();
    let path = std::path::absolute(socket_path(state_dir))
        .with_context(|| format!("cannot resolve {}", state_dir.display()))?;
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        tracing::warn!(path = %path.display(), "the state directory's path is too long for a Unix socket: \
            `edge-runner exec` cannot hand runs to this runner (it says the store is in use)");
        return Ok(None);
    }
    // Nobody else may put something at that path between the bind and the
    // chmod below (a symbolic link it would follow).
    let dir = std::fs::metadata(state_dir).with_context(|| format!("cannot inspect {}", state_dir.display()))?;
    let me = crate::check::euid();
    if dir.uid() != me || dir.mode() & 0o022 != 0 {
        tracing::warn!(dir = %state_dir.display(), mode = format!("{:o}", dir.mode() & 0o7777), owner = dir.uid(),
            "the state directory is not this user's alone: no socket for `edge-runner exec` (chmod 700 it, \
             owned by the runner's user)");
        return Ok(None);
    }
    let lock = std::fs::metadata(lock_path(state_dir))
        .with_context(|| format!("cannot inspect {}", lock_path(state_dir).display()))?;
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
    // connection is checked besides.
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot create the exec socket {}", path.display()))?;
    crate::server::probes::chmod_socket(&path, 0o600)
        .with_context(|| format!("cannot set mode 0600 on {}", path.display()))?;
    let own = Own { lock: (lock.dev(), lock.ino()), fixed: config.fixed() };
    Ok(Some(Listener { listener, _file: SocketFile::new(path)?, own }))
}

/// Serve hand-overs on `listener` until `shutdown`; runs already handed
/// over finish (they are the service's tasks) and their answers are sent.
pub async fn serve(listener: Listener, runs: Arc<RunService>, shutdown: impl std::future::Future<Output = ()>) {
    let own = listener.own;
    let mut open = accept_loop("exec", &listener.listener, MAX_CONNECTIONS, shutdown, |io, _| {
        let runs = runs.clone();
        async move { connection(io, runs, own).await }
    })
    .await;
    // No more connections wait in its backlog for an answer that never
    // comes: `exec` finds no socket and says the store is in use.
    drop(listener);
    while open.join_next().await.is_some() {}
}

async fn connection(mut io: tokio::net::UnixStream, runs: Arc<RunService>, own: Own) {
    let answer = match answer(&mut io, &runs, own).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %edge_core::text::line(&format!("{e:#}")), "exec hand-over refused");
            Answer { exit: Exit::Error as u8, out: String::new(), error: Some(format!("{e:#}")) }
        }
    };
    let body = match serde_json::to_vec(&answer) {
        Ok(b) if b.len() <= MAX_ANSWER_BYTES as usize => b,
        // (The report alone; the run is recorded either way.)
        _ => {
            let e = "the run's report is too large to hand back: it ran and is recorded; read it with \
                     `edge-runner evidence show`";
            serde_json::to_vec(&Answer { exit: answer.exit, out: String::new(), error: Some(e.into()) })
                .unwrap_or_default()
        }
    };
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    // A client gone, or not reading, before its answer: the run is
    // recorded either way.
    match tokio::time::timeout(ANSWER_TIMEOUT, io.write_all(&frame)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(error = %e, "exec went away before its answer"),
        Err(_) => tracing::info!("exec did not take its answer in time"),
    }
}

async fn answer(io: &mut tokio::net::UnixStream, runs: &Arc<RunService>, own: Own) -> Result<Answer> {
    same_user(io.as_raw_fd())?;
    let (request, inputs) = tokio::time::timeout(REQUEST_TIMEOUT, read_request(io, own.lock))
        .await
        .map_err(|_| anyhow!("the request was not sent within {} s", REQUEST_TIMEOUT.as_secs()))??;
    let runner = runs.runner();
    let state = runner.config.state_dir.display().to_string();
    if request.fixed != own.fixed {
        bail!(
            "the runner serving {state} started from another runner config than your --config names, in what only \
             a restart applies (mounts, endpoints, limits, listeners, switches): nothing ran. Restart it \
             (`systemctl restart edge-runner`) to put the file in force, or pass the config it runs"
        );
    }
    let (expected, signers) = (request.governance, request.signers);
    // At once (a request for other documents takes no slot), and again
    // with the governance the run takes once it has one (a reload may come
    // in between).
    same_governance(&state, &expected, signers, &runner.governance())?;
    let check = move |g: &Governance| same_governance(&state, &expected, signers, g);
    let report = match runs.exec_local(inputs.capsule, inputs.approvals, check).await {
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

/// Refuse a run whose `exec` named other governing documents than `g`'s.
fn same_governance(state: &str, expected: &ConfigDigests, signers: Sha256Digest, g: &Governance) -> Result<()> {
    let mut differ = differences(expected, &g.digests());
    if signers != signers_digest(&g.signers) {
        differ.push("trusted signers");
    }
    if differ.is_empty() {
        return Ok(());
    }
    bail!(
        "the runner serving {state} governs with other documents than your --config names ({}): nothing ran. \
         Reload it to put the file in force (`kill -HUP <pid>`, `systemctl reload edge-runner`, or POST \
         /v1/reload), or pass the config it runs",
        differ.join(", ")
    )
}

/// Refuse a connection whose process runs as another user than this one.
fn same_user(fd: RawFd) -> Result<()> {
    let me = crate::check::euid();
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
    if named.is_empty() && a != b { vec!["the config as shown"] } else { named }
}

/// The magic line, and the descriptor sent with it: the client's proof
/// that it may write the store (the lock file, opened for writing). One
/// descriptor, with the first bytes; any other is refused (and closed).
async fn read_magic(io: &tokio::net::UnixStream, lock: (u64, u64)) -> Result<()> {
    let mut magic = [0u8; MAGIC.len()];
    let mut got = 0;
    let mut passed: Option<OwnedFd> = None;
    while got < magic.len() {
        io.readable().await.context("reading the request")?;
        let first = got == 0;
        let (n, fd, truncated) =
            match io.try_io(tokio::io::Interest::READABLE, || recv_with_fd(io.as_raw_fd(), &mut magic[got..])) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(anyhow!(e).context("reading the request")),
            };
        if truncated || (fd.is_some() && !first) {
            bail!("the request passed more than the one descriptor `edge-runner exec` passes, with its first bytes");
        }
        if n == 0 {
            bail!("reading the request: the connection closed");
        }
        if fd.is_some() {
            passed = fd;
        }
        got += n;
    }
    if magic != MAGIC {
        bail!("not an `edge-runner exec` request of this version: run the same edge-runner as the one serving");
    }
    let Some(fd) = passed else {
        bail!(
            "the request did not pass the evidence store's lock file: `edge-runner exec` passes it, open for writing"
        );
    };
    // (fstat may wait on a file system: not on this task's thread.)
    let (m, flags) = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::from(fd);
        // SAFETY: F_GETFL on a descriptor this process owns.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        file.metadata().map(|m| (m, flags))
    })
    .await
    .context("checking the passed descriptor")?
    .context("the passed descriptor")?;
    if (m.dev(), m.ino()) != lock || flags < 0 || flags & libc::O_ACCMODE == libc::O_RDONLY {
        bail!(
            "the request did not pass this runner's evidence store lock file open for writing: only a process that \
             may write the store hands runs to it"
        );
    }
    Ok(())
}

/// `recvmsg` into `buf`: how many bytes, the descriptor passed with them
/// (close-on-exec), and whether the sender passed more than room was made
/// for (the kernel closes those).
fn recv_with_fd(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>, bool)> {
    // Room for exactly one descriptor (CMSG_SPACE(4) is 24 bytes), aligned
    // as cmsghdr needs.
    let mut control = [0u64; 3];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` and `control`, which outlive the call.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut passed = None;
    let mut more = msg.msg_flags & libc::MSG_CTRUNC != 0;
    // SAFETY: walking the control messages the kernel wrote into `control`
    // with the CMSG macros, within `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let owned = OwnedFd::from_raw_fd(data.add(i).read_unaligned());
                    if passed.is_none() {
                        passed = Some(owned);
                    } else {
                        more = true;
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok((n as usize, passed, more))
}

/// Send the start of `bytes` with the descriptor `pass` (what a request
/// opens with: [`MAGIC`] and the store's lock file); how many bytes went.
///
/// # Errors
/// If the socket refuses it.
pub fn send_with_fd(sock: RawFd, bytes: &[u8], pass: RawFd) -> std::io::Result<usize> {
    send_with_fds(sock, bytes, &[pass])
}

/// [`send_with_fd`] with up to four descriptors (what `exec` never sends:
/// for the tests of what the runner refuses).
///
/// # Errors
/// If the socket refuses it.
pub fn send_with_fds(sock: RawFd, bytes: &[u8], pass: &[RawFd]) -> std::io::Result<usize> {
    assert!((1..=4).contains(&pass.len()), "one to four descriptors");
    let mut control = [0u64; 6];
    let mut iov = libc::iovec { iov_base: bytes.as_ptr().cast_mut().cast(), iov_len: bytes.len() };
    // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    let size = std::mem::size_of_val(pass) as u32;
    // SAFETY: CMSG_SPACE is arithmetic; the header written fits `control`
    // (four descriptors: 32 bytes of 48).
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(size) as _;
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size) as _;
        let data = libc::CMSG_DATA(c).cast::<RawFd>();
        for (i, fd) in pass.iter().enumerate() {
            data.add(i).write_unaligned(*fd);
        }
    }
    // SAFETY: `msg` points at `iov` and `control`, which outlive the call.
    let n = unsafe { libc::sendmsg(sock, &raw const msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `n` bytes of the request, the buffer growing with what arrives.
async fn read_exactly(io: &mut tokio::net::UnixStream, n: u64) -> Result<Vec<u8>> {
    let mut b = Vec::with_capacity(n.min(READ_AHEAD) as usize);
    let got = (&mut *io).take(n).read_to_end(&mut b).await.context("reading the request")?;
    if (got as u64) < n {
        bail!("reading the request: the connection closed after {got} of {n} bytes");
    }
    Ok(b)
}

async fn read_request(io: &mut tokio::net::UnixStream, lock: (u64, u64)) -> Result<(Request, ExecInputs)> {
    read_magic(io, lock).await?;
    let len = io.read_u32().await.context("reading the request")?;
    if len > MAX_HEADER_BYTES {
        bail!("a request header of {len} bytes; the largest is {MAX_HEADER_BYTES}");
    }
    let header = read_exactly(io, u64::from(len)).await?;
    let request: Request = serde_json::from_slice(&header).context("the request header does not parse")?;
    if request.program != program() {
        bail!(
            "this runner is {} and the request comes from {}: restart the runner after an upgrade, or run the \
             edge-runner it runs",
            program(),
            edge_core::text::line(&request.program)
        );
    }
    if request.capsule > MAX_CAPSULE_FILE_BYTES {
        bail!("a capsule of {} bytes; the largest accepted is {MAX_CAPSULE_FILE_BYTES}", request.capsule);
    }
    if request.approvals.len() > MAX_APPROVALS || request.approvals.iter().any(|&n| n > MAX_APPROVAL_BYTES) {
        bail!("at most {MAX_APPROVALS} approvals of at most {MAX_APPROVAL_BYTES} bytes each");
    }
    let capsule = read_exactly(io, request.capsule).await?;
    let mut approvals = Vec::with_capacity(request.approvals.len());
    for &n in &request.approvals {
        approvals.push(read_exactly(io, n).await?);
    }
    Ok((request, ExecInputs { capsule, approvals }))
}

/// The user a connected Unix socket's other end runs as (`SO_PEERCRED`).
fn peer_uid(fd: RawFd) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Refuse a serving process of another user than this one.
fn served_by_me(fd: RawFd, state_dir: &Path) -> Result<()> {
    let me = crate::check::euid();
    let serving = peer_uid(fd).context("cannot read the serving process's user")?;
    if serving != me {
        bail!(
            "the runner serving {} runs as uid {serving}, not as you (uid {me}): run `edge-runner exec` as that user",
            state_dir.display()
        );
    }
    Ok(())
}

/// Hand `inputs` to the runner serving `config`'s state directory, if one
/// does: `None` when none answers there (`exec` then runs it itself).
///
/// # Errors
/// An input is larger than a hand-over carries, the process answering
/// runs as another user, the store's lock file cannot be opened for
/// writing, or the connection fails after it was made (the run may then
/// have happened: the error says where to look).
pub fn hand_over(config: &HandOverView, inputs: &ExecInputs, json: bool) -> Result<Option<Answer>> {
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
    served_by_me(stream.as_raw_fd(), &config.state_dir)?;
    // What `exec` alone would open to run: the proof it may.
    let lock =
        std::fs::OpenOptions::new().read(true).write(true).open(lock_path(&config.state_dir)).with_context(|| {
            format!("cannot open {} for writing, as exec must to run", lock_path(&config.state_dir).display())
        })?;
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
        program: program(),
        json,
        governance: config.digests.clone(),
        signers: config.signers,
        fixed: config.fixed,
        capsule: inputs.capsule.len() as u64,
        approvals: inputs.approvals.iter().map(|a| a.len() as u64).collect(),
    };
    let header = serde_json::to_vec(&request)?;
    let lost = |e: std::io::Error| {
        anyhow!(e).context(format!(
            "the runner serving {} stopped answering: the run may have happened (its records are in the evidence \
             store: `edge-runner evidence show`)",
            config.state_dir.display()
        ))
    };
    let mut head = (header.len() as u32).to_be_bytes().to_vec();
    head.extend_from_slice(&header);
    // A runner that refuses early (another user, other governance, a full
    // queue) answers and closes without reading the rest: its answer is
    // read even when sending failed.
    let sent = (|| -> std::io::Result<()> {
        let n = send_with_fd(stream.as_raw_fd(), MAGIC, lock.as_raw_fd())?;
        stream.write_all(&MAGIC[n..])?;
        stream.write_all(&head)?;
        stream.write_all(&inputs.capsule)?;
        inputs.approvals.iter().try_for_each(|a| stream.write_all(a))
    })();
    drop(lock);
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
    let mut body = Vec::with_capacity(len.min(READ_AHEAD as u32) as usize);
    stream.take(u64::from(len)).read_to_end(&mut body)?;
    if body.len() < len as usize {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt as _;

    /// The address of an abstract socket, for a forked child's raw calls.
    fn abstract_addr(name: &str) -> (libc::sockaddr_un, libc::socklen_t) {
        // SAFETY: a zeroed sockaddr_un is valid.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, b) in name.bytes().enumerate() {
            sa.sun_path[i + 1] = b as libc::c_char;
        }
        (sa, (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t)
    }

    /// Whether this process may become another user (root): the tests of
    /// the user checks need a process of another user.
    fn root() -> bool {
        let root = crate::check::euid() == 0;
        if !root {
            // CI runs as root: there, a test of the user check never skips.
            assert!(std::env::var_os("CI").is_none(), "the user-check tests need root, and CI runs them");
            eprintln!("skipped: changing to another user needs root");
        }
        root
    }

    /// Fork a child that becomes uid/gid 65534 and runs `f` (raw system
    /// calls only: this process has other threads); its exit status.
    fn as_nobody(f: impl FnOnce() -> bool) -> impl FnOnce() -> i32 {
        // SAFETY: the child calls only async-signal-safe functions and
        // leaves with `_exit`.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: as above.
            unsafe {
                let ok = libc::setgid(65534) == 0 && libc::setuid(65534) == 0 && f();
                libc::_exit(i32::from(!ok));
            }
        }
        move || {
            let mut status = 0;
            // SAFETY: waits for the child forked above.
            unsafe { libc::waitpid(child, &raw mut status, 0) };
            libc::WEXITSTATUS(status)
        }
    }

    /// A connection from a process of another user is refused by what the
    /// kernel says of it, whatever the socket file's mode allowed.
    #[test]
    fn a_connection_from_another_user_is_refused() {
        if !root() {
            return;
        }
        // An abstract socket: no file permission stands in the way, so only
        // the user check can refuse.
        let name = format!("edge-runner-test-in-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let (sa, len) = abstract_addr(&name);
        let wait = as_nobody(|| unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let connected = libc::connect(fd, (&raw const sa).cast(), len) == 0;
            let mut b = [0u8; 1];
            libc::read(fd, b.as_mut_ptr().cast(), 1);
            connected
        });
        let (conn, _) = listener.accept().unwrap();
        let refused = same_user(conn.as_raw_fd()).unwrap_err().to_string();
        drop(conn);
        assert_eq!(wait(), 0, "the child ran as uid 65534 and connected");
        assert!(refused.contains("runs as uid 0") && refused.contains("you are uid 65534"), "{refused}");
        // And this process, the same user, is let through.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        same_user(a.as_raw_fd()).unwrap();
    }

    /// `exec` hands nothing to a process of another user answering where
    /// the runner's socket should be.
    #[test]
    fn a_serving_process_of_another_user_is_refused() {
        if !root() {
            return;
        }
        let name = format!("edge-runner-test-out-{}", std::process::id());
        let (sa, len) = abstract_addr(&name);
        let wait = as_nobody(|| unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if libc::bind(fd, (&raw const sa).cast(), len) != 0 || libc::listen(fd, 1) != 0 {
                return false;
            }
            let c = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
            let mut b = [0u8; 1];
            libc::read(c, b.as_mut_ptr().cast(), 1);
            c >= 0
        });
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match std::os::unix::net::UnixStream::connect_addr(&addr) {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => panic!("the child never listened: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let refused = served_by_me(conn.as_raw_fd(), Path::new("/srv/state")).unwrap_err().to_string();
        drop(conn);
        assert_eq!(wait(), 0, "the child ran as uid 65534 and accepted");
        assert!(refused.contains("runs as uid 65534, not as you (uid 0)"), "{refused}");
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
