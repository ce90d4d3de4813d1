//! The spool intake: capsules and approvals dropped into a directory,
//! answers written back to another, for segments with no network path to
//! the agents at all (removable media, a one-way link).
//!
//! ```text
//!  inbox/NAME ──(settled: size and mtime unchanged for `settle`)──►
//!  rename ► work/<delivery>~NAME ──► run service (same checks, same evidence)
//!                 │                        │
//!                 │                        ▼
//!                 │          outbox/NAME.<delivery>.answer.json, receipt,
//!                 │          checkpoint.txt (exports: export-<size>.bundle)
//!                 ▼
//!  rename ► done/NAME + done/NAME.reason   (or refused/…)
//! ```
//!
//! What makes it safe across a kill at any point:
//!
//! - **Taken once.** A file is claimed by renaming it out of the inbox into
//!   `work/` under a name that carries its delivery id — for a capsule,
//!   the id of the run it becomes, chosen before the run starts (both
//!   directories synced before anything runs). A rename is atomic: no file
//!   is taken twice, and none is lost.
//! - **Run once.** Before a claimed capsule runs, the evidence log is asked
//!   whether its run exists; if the submission record is durable the run is
//!   not started again, and its answer is made from the log. Approvals are
//!   idempotent by nature (a proposal that no longer waits takes none).
//! - **Never half a file.** Dot-files and `*.part`/`*.tmp` names are never
//!   read; any other file is taken only once its size and modification
//!   time have held still for `spool.settle`.
//! - **Answer before release.** The claimed file leaves `work/` only after
//!   its answer is in the outbox. An outbox that cannot be written (a full
//!   disk) leaves it there; it is answered, not run, on a later pass.
//! - **Same name twice.** A file with the name and the content of one
//!   already in `done/` is refused as a duplicate, not run again; one with
//!   the same name and other content is processed and kept beside the first
//!   (`NAME.2`, …); while one delivery of a name is in `work/`, the next
//!   waits in the inbox.
//!
//! The spool runs on `serve`'s multi-threaded runtime; its file-system
//! work runs in `block_in_place`, so the API's requests on the same
//! runtime are not held up by its fsyncs.
//!
//! File names are hostile text: they reach logs only through
//! [`edge_core::text::line`], and a name that is not UTF-8, holds control
//! characters or bidi overrides, starts with a dash or is too long to carry
//! a suffix is refused under a safe name.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use edge_core::Sha256Digest;
use serde_json::json;

use crate::config::spool::SpoolSettings;
use crate::service::{Delivered, QueueError, RunService};
use crate::staging::{sync_dir, write_durably};

/// Longest inbox file name taken (leaves room for the suffixes the spool adds
/// within the 255 bytes of a file name).
const MAX_NAME: usize = 160;
/// Claimed files in progress at once. The run service bounds runs itself
/// (8 at once by default); this bounds the rest. Each file in progress does
/// its file-system work in `block_in_place`, which hands the async worker's
/// other tasks to a new thread: 256 at once made ~300 threads and 2.2 GiB
/// of RSS (the allocator's per-thread caches) for 1,000 capsules dropped
/// together, where 16 keep the runs' slots fed.
const MAX_IN_FLIGHT: usize = 16;

/// What a dropped file is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Capsule,
    Approval,
    Export,
}

fn kind(name: &str) -> Option<Kind> {
    if name.ends_with(".capsule") {
        Some(Kind::Capsule)
    } else if name.ends_with(".approval.json") || name.ends_with(".approval") {
        Some(Kind::Approval)
    } else if name.ends_with(".export-request") {
        Some(Kind::Export)
    } else {
        None
    }
}

/// Files that are never read: being written under a temporary name.
fn in_progress(name: &std::ffi::OsStr) -> bool {
    let b = name.as_encoded_bytes();
    b.starts_with(b".") || b.ends_with(b".part") || b.ends_with(b".tmp") || b.ends_with(b".partial")
}

/// How a processed file ends.
#[derive(Debug)]
struct Ending {
    refused: bool,
    /// One line for `<name>.reason`.
    reason: String,
}

/// The spool's shared state.
struct Spool {
    settings: SpoolSettings,
    runs: Arc<RunService>,
    /// Claimed files being processed (their `work/` names).
    in_flight: Mutex<HashSet<String>>,
    /// Claimed files whose processing failed: when to try again.
    retry: Mutex<HashMap<String, (u32, Instant)>>,
    /// Whether something was answered since the last checkpoint written.
    answered: std::sync::atomic::AtomicBool,
}

/// Take files until `shutdown` completes; claimed files in progress
/// finish first. The directories are made beforehand ([`prepare`]); a
/// failure on the way (an unreadable inbox, a full outbox) is logged and
/// tried again at the next poll, never the end of the spool.
///
/// # Errors
/// None today; the signature leaves room for a failure to start.
pub async fn serve(
    settings: SpoolSettings,
    runs: Arc<RunService>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let spool = Arc::new(Spool {
        settings,
        runs,
        in_flight: Mutex::new(HashSet::new()),
        retry: Mutex::new(HashMap::new()),
        answered: std::sync::atomic::AtomicBool::new(false),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut seen: HashMap<OsString, (u64, SystemTime, Instant)> = HashMap::new();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(spool.settings.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a spool task failed");
            }
        }
        // What an earlier pass (or process) claimed and did not finish first,
        // then what is new.
        // File-system work (reads, renames, fsyncs) off the async workers'
        // hot path: the runtime moves their other tasks elsewhere meanwhile.
        let claimed = match tokio::task::block_in_place(|| spool.claimed_ready()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the spool's work directory");
                continue;
            }
        };
        let fresh = match tokio::task::block_in_place(|| spool.claim_settled(&mut seen)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot take files from the spool's inbox");
                Vec::new()
            }
        };
        for work_name in claimed.into_iter().chain(fresh) {
            let s = spool.clone();
            tasks.spawn(async move { s.process(work_name).await });
        }
        if spool.answered.swap(false, std::sync::atomic::Ordering::AcqRel)
            && let Err(e) = spool.write_checkpoint().await
        {
            tracing::error!(error = %format!("{e:#}"), "cannot write the checkpoint to the spool's outbox");
            spool.answered.store(true, std::sync::atomic::Ordering::Release);
        }
    }
    while tasks.join_next().await.is_some() {}
    if spool.answered.load(std::sync::atomic::Ordering::Acquire) {
        let _ = spool.write_checkpoint().await;
    }
    Ok(())
}

/// Make the spool's directories (mode 0700) if they are missing.
///
/// # Errors
/// If one cannot be made, or its path is something else.
pub fn prepare(settings: &SpoolSettings) -> Result<()> {
    make_private_dir(&settings.inbox(), false)?;
    // The directory holding them: whoever may write there could swap work/
    // or outbox/ for a directory (or symlink) of their own after this check.
    {
        use std::os::unix::fs::MetadataExt as _;
        let d = &settings.dir;
        let meta = std::fs::metadata(d).with_context(|| format!("cannot read {}", d.display()))?;
        let (mode, me) = (meta.mode() & 0o7777, crate::check::euid());
        anyhow::ensure!(
            mode & 0o022 == 0,
            "the spool directory {} is writable by its group or by everyone (mode {mode:o}): they could replace its \
             work/ or outbox/ with their own; chmod go-w it",
            d.display()
        );
        anyhow::ensure!(
            meta.uid() == me || meta.uid() == 0,
            "the spool directory {} belongs to uid {}, neither the runner's user ({me}) nor root: its owner could \
             replace its work/ or outbox/; chown it to the runner's user",
            d.display(),
            meta.uid()
        );
    }
    for d in [settings.work(), settings.done(), settings.refused(), settings.outbox()] {
        make_private_dir(&d, true)?;
    }
    Ok(())
}

/// Make `d` (0700) if missing, and check what is there: a directory (not a
/// symlink to one), not writable by every user, and — for the runner's own
/// (`own`: work, done, refused, outbox) — owned by the runner's user and
/// writable by it alone. The inbox may belong to the account that brings
/// files in, and be writable by its group.
fn make_private_dir(d: &Path, own: bool) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d) {
        Ok(()) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create the spool directory {}", d.display())),
    }
    let meta = std::fs::symlink_metadata(d).with_context(|| format!("cannot read {}", d.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "the spool path {} is not a directory (a symlink is not followed): remove what is there or point spool.dir \
         elsewhere",
        d.display()
    );
    let mode = meta.mode() & 0o7777;
    anyhow::ensure!(
        mode & 0o002 == 0,
        "the spool directory {} is writable by every user (mode {mode:o}): anyone could put files in or take them \
         out; chmod o-w it",
        d.display()
    );
    if own {
        let me = crate::check::euid();
        anyhow::ensure!(
            meta.uid() == me,
            "the spool directory {} belongs to uid {}, not to the runner's user ({me}): another user could swap \
             files the runner has claimed or answered; chown it to the runner's user",
            d.display(),
            meta.uid()
        );
        anyhow::ensure!(
            mode & 0o020 == 0,
            "the spool directory {} is writable by its group (mode {mode:o}): only the inbox may be; chmod g-w it",
            d.display()
        );
    }
    Ok(())
}

/// Why a claimed file was not read.
#[derive(Debug)]
enum Unread {
    /// Refused as it is (moved to `refused/` with this reason).
    Refused(String),
    /// Another name for a file elsewhere: refused, and this name removed
    /// (the spool keeps no name for it).
    Linked(String),
}

impl Unread {
    fn reason(&self) -> &str {
        match self {
            Self::Refused(r) | Self::Linked(r) => r,
        }
    }
}

/// Read a claimed file without following a symlink or blocking on a FIFO,
/// checking what was opened (not the path) and reading at most `limit`
/// bytes. `Ok(Err(_))` refuses the file.
fn read_claimed(path: &Path, limit: u64) -> Result<Result<Vec<u8>, Unread>> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    const NOT_A_FILE: &str = "not a regular file (a symlink or a directory is never followed)";
    // What the name is now, before it is opened: a socket or a device is
    // never opened at all (and what opens is checked again below).
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Ok(Err(Unread::Refused(NOT_A_FILE.into()))),
        Ok(_) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Ok(Err(Unread::Refused(
                "the runner may not read it (permission denied): make it readable and drop it again".into(),
            )));
        }
        // A symlink (ELOOP), a socket (ENXIO) or a device put in its place
        // since: refused, never retried.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO | libc::ENODEV | libc::EOPNOTSUPP)) => {
            return Ok(Err(Unread::Refused(NOT_A_FILE.into())));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let meta = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.file_type().is_file() {
        return Ok(Err(Unread::Refused(NOT_A_FILE.into())));
    }
    if meta.nlink() > 1 {
        // Another name for a file elsewhere (a key, a store): its content
        // would be read, answered and perhaps kept as evidence.
        return Ok(Err(Unread::Linked(format!(
            "[spool.hard-link] it had {} names (a hard link to a file elsewhere is never read, and its name in the \
             spool is removed): copy the file in",
            meta.nlink()
        ))));
    }
    if meta.len() > limit {
        return Ok(Err(Unread::Refused(too_large(meta.len(), limit))));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // (At most one byte past the limit: a file still growing is refused, not read whole.)
    file.take(limit + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Ok(Err(Unread::Refused(too_large(bytes.len() as u64, limit))));
    }
    Ok(Ok(bytes))
}

fn too_large(len: u64, limit: u64) -> String {
    format!("[spool.too-large] {len} bytes; the largest file taken is {limit} (spool.max_file_mib)")
}

/// A claimed file's parts: `<delivery>~<name>`.
fn split_claimed(work_name: &str) -> Option<(&str, &str)> {
    let (delivery, name) = work_name.split_once('~')?;
    crate::pipeline::is_run_id(delivery).then_some((delivery, name))
}

impl Spool {
    /// Claimed files not in progress and not waiting out a retry delay.
    fn claimed_ready(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let now = Instant::now();
        let in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let retry = self.retry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for entry in std::fs::read_dir(self.settings.work())? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if in_progress(std::ffi::OsStr::new(name)) || in_flight.contains(name) {
                continue;
            }
            if retry.get(name).is_some_and(|(_, at)| *at > now) {
                continue;
            }
            out.push(name.to_owned());
        }
        drop((in_flight, retry));
        self.mark_in_flight(&out);
        Ok(out)
    }

    fn mark_in_flight(&self, names: &[String]) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        in_flight.extend(names.iter().cloned());
    }

    /// Claim the inbox files that have held still for `settle`.
    fn claim_settled(&self, seen: &mut HashMap<OsString, (u64, SystemTime, Instant)>) -> Result<Vec<String>> {
        let inbox = self.settings.inbox();
        let work = self.settings.work();
        let now = Instant::now();
        let mut present = HashSet::new();
        let mut ready = Vec::new();
        for entry in std::fs::read_dir(&inbox).with_context(|| format!("cannot read {}", inbox.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            if in_progress(&name) {
                continue;
            }
            // Never followed: a symlink or a directory is refused as it is.
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
            let stamp = (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            present.insert(name.clone());
            let since = match seen.get(&name) {
                Some(&(len, mtime, since)) if (len, mtime) == stamp => since,
                _ => {
                    seen.insert(name.clone(), (stamp.0, stamp.1, now));
                    now
                }
            };
            if now.duration_since(since) >= self.settings.settle {
                ready.push(name);
            }
        }
        seen.retain(|n, _| present.contains(n));
        let busy = self.claimed_names()?;
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight.lock().map_or(MAX_IN_FLIGHT, |s| s.len()));
        ready.sort();
        let mut claimed = Vec::new();
        for name in ready.into_iter().take(room) {
            let shown = safe_name(&name);
            // One delivery of a name at a time.
            if busy.contains(shown.as_str()) {
                continue;
            }
            let delivery = crate::pipeline::new_run_id();
            let work_name = format!("{delivery}~{shown}");
            match std::fs::rename(inbox.join(&name), work.join(&work_name)) {
                Ok(()) => {
                    seen.remove(&name);
                    claimed.push(work_name);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot move a file from {}", inbox.display())),
            }
        }
        if !claimed.is_empty() {
            // Both renames durable before anything runs: a claim lost to a
            // power cut would be claimed again under another run id.
            sync_dir(&work).with_context(|| format!("cannot sync {}", work.display()))?;
            sync_dir(&inbox).with_context(|| format!("cannot sync {}", inbox.display()))?;
        }
        self.mark_in_flight(&claimed);
        Ok(claimed)
    }

    /// The inbox names of the files in `work/`.
    fn claimed_names(&self) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        for entry in std::fs::read_dir(self.settings.work())? {
            if let Some(name) = entry?.file_name().to_str().and_then(split_claimed).map(|(_, n)| n.to_owned()) {
                out.insert(name);
            }
        }
        Ok(out)
    }

    /// Process one claimed file to its end; on a failure of the runner (not
    /// of the file) it stays claimed and is tried again later.
    async fn process(self: Arc<Self>, work_name: String) {
        let result = self.process_inner(&work_name).await;
        let failed = match result {
            Ok(true) => false,
            Ok(false) => true,
            Err(e) => {
                tracing::error!(
                    file = %edge_core::text::line(&work_name),
                    error = %format!("{e:#}"),
                    "spool file not finished; it stays in work/ and is tried again"
                );
                true
            }
        };
        {
            let mut retry = self.retry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if failed {
                self.runs.metrics_intake("spool", "retried");
                let tries = retry.get(&work_name).map_or(0, |(n, _)| *n).saturating_add(1);
                let wait = (self.settings.poll * 2u32.saturating_pow(tries.min(8))).min(Duration::from_secs(60));
                retry.insert(work_name.clone(), (tries, Instant::now() + wait));
            } else {
                retry.remove(&work_name);
            }
        }
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&work_name);
    }

    /// Ok(true): finished (answered and moved); Ok(false): try again later
    /// (the run service is full or stopping).
    async fn process_inner(&self, work_name: &str) -> Result<bool> {
        let path = self.settings.work().join(work_name);
        let Some((delivery, name)) = split_claimed(work_name) else {
            // Not ours (someone put it in work/ by hand): refused as it is.
            let ending = Ending { refused: true, reason: "not a claimed spool file; drop files into inbox/".into() };
            self.finish(&path, work_name, None, &ending)?;
            return Ok(true);
        };
        let refuse = |reason: String| Ending { refused: true, reason };
        let early = if name.starts_with("invalid-name-") {
            Some(refuse(
                "[spool.bad-name] the file's name is not UTF-8, holds control characters, starts with a dash or is \
                 too long"
                    .into(),
            ))
        } else if kind(name).is_none() {
            Some(refuse(
                "[spool.unknown-kind] name it *.capsule (a capsule), *.approval.json (an approval) or \
                 *.export-request (an evidence export)"
                    .into(),
            ))
        } else {
            None
        };
        if let Some(ending) = early {
            self.finish(&path, name, None, &ending)?;
            return Ok(true);
        }
        // A capsule that already ran (a kill before its answer was out) is
        // answered from the log, without reading the file again.
        if kind(name) == Some(Kind::Capsule) && self.runs.ran(delivery)? {
            let answer = self.runs.answer_of(delivery).await?;
            let ending = ending_of(&answer);
            return self.answer_and_finish(&path, name, delivery, answer, &ending).await;
        }
        let bytes = match tokio::task::block_in_place(|| read_claimed(&path, self.settings.max_file_bytes))? {
            Ok(bytes) => bytes,
            Err(Unread::Refused(why)) => {
                self.finish(&path, name, None, &refuse(why))?;
                return Ok(true);
            }
            Err(linked @ Unread::Linked(_)) => {
                tokio::task::block_in_place(|| self.discard(&path, name, linked.reason()))?;
                return Ok(true);
            }
        };
        let (answer, ending) = match kind(name) {
            Some(Kind::Capsule) => match self.capsule(delivery, name, bytes).await? {
                Some(done) => done,
                None => return Ok(false),
            },
            Some(Kind::Approval) => match self.approval(bytes).await? {
                Some(done) => done,
                None => return Ok(false),
            },
            Some(Kind::Export) => self.export(delivery, &bytes).await?,
            None => unreachable!("unknown kinds are refused above"),
        };
        self.answer_and_finish(&path, name, delivery, answer, &ending).await
    }

    /// Write a processed file's answer (and receipt, and what approvers
    /// review) to the outbox, then move the file to its end. Ok(true).
    async fn answer_and_finish(
        &self,
        path: &Path,
        name: &str,
        delivery: &str,
        answer: serde_json::Value,
        ending: &Ending,
    ) -> Result<bool> {
        let answer_name = format!("{name}.{delivery}.answer.json");
        self.write_out(&answer_name, &serde_json::to_vec_pretty(&answer)?)?;
        if let (Some(receipt), Some(run)) =
            (answer.get("receipt").and_then(|r| r.as_str()), answer.get("run").and_then(|r| r.as_str()))
        {
            self.write_out(&format!("{run}.receipt"), receipt.as_bytes())?;
        }
        // What approvers review, for the trip back: a waiting proposal's
        // document and preview (the preview's content travels beside the
        // document, as `approve` wants it).
        if answer.get("state").and_then(|s| s.as_str()) == Some("awaiting-approval")
            && let Some(id) = answer.get("id").and_then(|s| s.as_str())
        {
            if let Some(doc) = self.runs.document(id) {
                self.write_out(&format!("{id}.json"), &doc)?;
            }
            if let Some(preview) = self.runs.preview(id)? {
                self.write_out(&format!("{id}.preview.json"), &serde_json::to_vec(&preview)?)?;
            }
        }
        self.answered.store(true, std::sync::atomic::Ordering::Release);
        self.finish(path, name, Some(&answer_name), ending)?;
        let refused = ending.refused;
        tracing::info!(
            target: "edge_runner::spool",
            file = %edge_core::text::line(name),
            delivery,
            refused,
            reason = %edge_core::text::line(&ending.reason),
            "spool file processed"
        );
        Ok(true)
    }

    /// A capsule: its run, or (if the log already holds it) its answer
    /// from the log. None: not now (the queue is full).
    async fn capsule(&self, run: &str, name: &str, bytes: Vec<u8>) -> Result<Option<(serde_json::Value, Ending)>> {
        if let Some(first) = tokio::task::block_in_place(|| self.duplicate_of(name, &bytes))? {
            let reason = format!(
                "[spool.duplicate] the same name and content as {first}, processed before: not run again \
                 (to run it again, drop it under another name)"
            );
            let answer = json!({ "file": name, "refused": reason });
            return Ok(Some((answer, Ending { refused: true, reason })));
        }
        let agent = format!("spool:{}", edge_core::text::line(name).chars().take(100).collect::<String>());
        match self.runs.submit_as(run.to_owned(), crate::service::Submission::File(bytes), agent).await {
            Ok(Ok(reply)) => {
                let answer = serde_json::to_value(&reply)?;
                let ending = ending_of(&answer);
                Ok(Some((answer, ending)))
            }
            Ok(Err(e)) => Err(e),
            Err(QueueError::Full | QueueError::Stopped) => Ok(None),
        }
    }

    /// An earlier delivery in `done/` with this name and these bytes.
    fn duplicate_of(&self, name: &str, bytes: &[u8]) -> Result<Option<String>> {
        let done = self.settings.done();
        let digest = Sha256Digest::of(bytes);
        for n in 1.. {
            let candidate = if n == 1 { name.to_owned() } else { format!("{name}.{n}") };
            let path = done.join(&candidate);
            match std::fs::symlink_metadata(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
            // Read as a claimed file is, and no further than this file's
            // length: a larger one (or one its sender grew since) is not
            // the same file.
            if let Ok(b) = read_claimed(&path, bytes.len() as u64)?
                && Sha256Digest::of(&b) == digest
            {
                return Ok(Some(format!("done/{candidate}")));
            }
        }
        Ok(None)
    }

    /// An approval: kept for the proposal it names (which runs once its
    /// quorum is met). None: not now.
    async fn approval(&self, bytes: Vec<u8>) -> Result<Option<(serde_json::Value, Ending)>> {
        match self.runs.approve_delivered(bytes).await {
            Ok(Ok(Delivered::Kept(kept))) => {
                let mut answer = serde_json::to_value(&kept)?;
                let reason = match &kept.run {
                    Some(run) => format!("kept; the quorum was reached and the proposal ran: {}", run.state),
                    None => "kept; the proposal waits for more approvals".to_owned(),
                };
                // The run's receipt, where the outbox writer looks for it.
                if let Some(run) = &kept.run {
                    answer["receipt"] = json!(run.receipt);
                    answer["run"] = json!(run.run);
                }
                Ok(Some((answer, Ending { refused: false, reason })))
            }
            Ok(Ok(Delivered::Again(again))) => {
                // (`run` and `receipt` where the outbox writer looks for them.)
                let answer = serde_json::to_value(&again)?;
                let reason = format!("kept when it was delivered before; the proposal is {}", again.state);
                Ok(Some((answer, Ending { refused: false, reason })))
            }
            Ok(Ok(Delivered::Refused { proposal, reason_code, detail })) => {
                let reason = format!("[{reason_code}] {detail}");
                Ok(Some((json!({ "proposal": proposal, "refused": reason }), Ending { refused: true, reason })))
            }
            Ok(Err(e)) => Err(e),
            Err(QueueError::Full | QueueError::Stopped) => Ok(None),
        }
    }

    /// An export request: empty for the whole log, or the text of an
    /// earlier checkpoint for what follows it.
    async fn export(&self, delivery: &str, bytes: &[u8]) -> Result<(serde_json::Value, Ending)> {
        let since = match std::str::from_utf8(bytes) {
            Ok(t) if t.trim().is_empty() => None,
            Ok(t) => Some(t.to_owned()),
            Err(_) => {
                let reason = "[spool.bad-request] an export request is empty or holds a checkpoint's text".to_owned();
                return Ok((json!({ "refused": reason }), Ending { refused: true, reason }));
            }
        };
        let file = format!("export-{delivery}.bundle");
        let path = self.settings.outbox().join(&file);
        match self.runs.export_file(since, path).await {
            Ok(e) => Ok((
                json!({ "export": file, "records": e.records, "artifacts": e.artifacts }),
                Ending { refused: false, reason: format!("exported to outbox/{file}") },
            )),
            Err(e) => {
                let reason = format!("[spool.export-failed] {e:#}");
                Ok((json!({ "refused": reason }), Ending { refused: true, reason }))
            }
        }
    }

    fn write_out(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.settings.outbox().join(name);
        tokio::task::block_in_place(|| write_durably(&path, bytes)).with_context(|| {
            format!("cannot write {} (is the outbox full or not writable?); the file stays in work/", path.display())
        })
    }

    async fn write_checkpoint(&self) -> Result<()> {
        let note = self.runs.checkpoint().await?;
        self.write_out("checkpoint.txt", note.as_bytes())
    }

    /// Refuse a claimed file without keeping it: its reason in `refused/`,
    /// its name removed.
    fn discard(&self, path: &Path, name: &str, reason: &str) -> Result<()> {
        let dir = self.settings.refused();
        let dest = free_slot(&dir, name);
        let reason = format!("{}\n", edge_core::text::line(reason));
        write_durably(&dir.join(format!("{dest}.reason")), reason.as_bytes())?;
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        sync_dir(&self.settings.work())?;
        self.runs.metrics_intake("spool", "refused");
        Ok(())
    }

    /// Move a claimed file to `done/` or `refused/` (never over another),
    /// with its reason beside it.
    fn finish(&self, path: &Path, name: &str, answer: Option<&str>, ending: &Ending) -> Result<()> {
        tokio::task::block_in_place(|| self.finish_blocking(path, name, answer, ending))
    }

    fn finish_blocking(&self, path: &Path, name: &str, answer: Option<&str>, ending: &Ending) -> Result<()> {
        let dir = if ending.refused { self.settings.refused() } else { self.settings.done() };
        let dest = free_slot(&dir, name);
        let mut reason = edge_core::text::line(&ending.reason).into_owned();
        if let Some(a) = answer {
            reason.push_str(&format!("\nanswer: outbox/{a}"));
        }
        reason.push('\n');
        write_durably(&dir.join(format!("{dest}.reason")), reason.as_bytes())?;
        std::fs::rename(path, dir.join(&dest))
            .with_context(|| format!("cannot move {} to {}", path.display(), dir.display()))?;
        sync_dir(&dir)?;
        sync_dir(&self.settings.work())?;
        self.runs.metrics_intake("spool", if ending.refused { "refused" } else { "processed" });
        Ok(())
    }
}

/// Where `name` goes in `dir` (`done/`, `refused/`): `name`, else the first
/// of `name.2`, `name.3`, … with no file there. A reason without its file is
/// this spool's own, written just before a move that a kill prevented, and
/// is written again.
fn free_slot(dir: &Path, name: &str) -> String {
    let mut n = 1;
    loop {
        let candidate = if n == 1 { name.to_owned() } else { format!("{name}.{n}") };
        if std::fs::symlink_metadata(dir.join(&candidate)).is_err() {
            return candidate;
        }
        n += 1;
    }
}

/// How an answer ends: done unless nothing ran (refused at admission or by
/// policy).
fn ending_of(answer: &serde_json::Value) -> Ending {
    let state = answer["state"].as_str().unwrap_or("?");
    let run = answer["run"].as_str().unwrap_or("?");
    let id = answer["id"].as_str().unwrap_or("?");
    let refusal = &answer["refusal"];
    let mut reason = format!("{state}: run {run}, proposal {id}");
    if let Some(code) = refusal["reason_code"].as_str() {
        reason.push_str(&format!(" [{code}] {}", refusal["detail"].as_str().unwrap_or("")));
    }
    Ending { refused: state == "refused", reason }
}

/// An inbox name as the spool uses it: UTF-8, no leading dash, short enough
/// for the suffixes it adds; otherwise a safe stand-in naming its digest.
fn safe_name(name: &std::ffi::OsStr) -> String {
    match name.to_str() {
        // Control characters, escape sequences and bidi overrides would
        // reach whoever lists the spool's folders: refused, not kept.
        // (`.reason` is the spool's own suffix, for the file beside each.)
        Some(s)
            if s.len() <= MAX_NAME
                && !s.starts_with('-')
                && !s.contains('~')
                && !s.ends_with(".reason")
                && edge_core::text::line(s) == s =>
        {
            s.to_owned()
        }
        _ => format!("invalid-name-{}", &Sha256Digest::of(name.as_encoded_bytes()).hex()[..16]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_directories_others_could_write_or_swap_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let settings = SpoolSettings {
            dir: dir.path().join("spool"),
            settle: Duration::ZERO,
            poll: Duration::from_millis(100),
            max_file_bytes: 1 << 20,
        };
        prepare(&settings).unwrap();
        let mode = |d: &Path, m: u32| std::fs::set_permissions(d, std::fs::Permissions::from_mode(m)).unwrap();
        // The inbox may be the bringing account's group's to write; not everyone's.
        mode(&settings.inbox(), 0o770);
        prepare(&settings).unwrap();
        mode(&settings.inbox(), 0o777);
        assert!(format!("{:#}", prepare(&settings).unwrap_err()).contains("writable by every user"));
        mode(&settings.inbox(), 0o700);
        // The runner's own directories: not even its group's.
        mode(&settings.work(), 0o770);
        assert!(format!("{:#}", prepare(&settings).unwrap_err()).contains("writable by its group"));
        mode(&settings.work(), 0o700);
        // The directory holding them: the runner's (or root's), and its alone to write.
        mode(&settings.dir, 0o770);
        assert!(format!("{:#}", prepare(&settings).unwrap_err()).contains("writable by its group or by everyone"));
        mode(&settings.dir, 0o755);
        prepare(&settings).unwrap();
        // A symlink in place of one is not followed.
        std::fs::remove_dir(settings.outbox()).unwrap();
        std::os::unix::fs::symlink(dir.path(), settings.outbox()).unwrap();
        assert!(format!("{:#}", prepare(&settings).unwrap_err()).contains("a symlink is not followed"));
    }

    #[test]
    fn a_claimed_file_is_read_through_what_was_opened_and_never_past_the_limit() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("ok"), b"12345").unwrap();
        assert_eq!(read_claimed(&p("ok"), 5).unwrap().unwrap(), b"12345");
        assert!(read_claimed(&p("ok"), 4).unwrap().unwrap_err().reason().contains("[spool.too-large] 5 bytes"));
        // Another name for a file elsewhere (a key): never read.
        std::fs::write(p("secret"), b"key").unwrap();
        std::fs::hard_link(p("secret"), p("linked")).unwrap();
        assert!(
            read_claimed(&p("linked"), 100).unwrap().unwrap_err().reason().contains("[spool.hard-link] it had 2 names")
        );
        std::os::unix::fs::symlink(p("ok"), p("sym")).unwrap();
        assert!(read_claimed(&p("sym"), 100).unwrap().unwrap_err().reason().contains("never followed"));
        // A FIFO would block a plain open forever.
        let fifo = std::ffi::CString::new(p("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(read_claimed(&p("fifo"), 100).unwrap().unwrap_err().reason().contains("not a regular file"));
        let _socket = std::os::unix::net::UnixListener::bind(p("socket")).unwrap();
        assert!(read_claimed(&p("socket"), 100).unwrap().unwrap_err().reason().contains("not a regular file"));
        std::fs::create_dir(p("dir")).unwrap();
        assert!(read_claimed(&p("dir"), 100).unwrap().unwrap_err().reason().contains("not a regular file"));
        // Unreadable (not for root, who reads anything): refused, not retried forever.
        std::fs::set_permissions(p("ok"), std::fs::Permissions::from_mode(0o000)).unwrap();
        if crate::check::euid() != 0 {
            assert!(read_claimed(&p("ok"), 100).unwrap().unwrap_err().reason().contains("permission denied"));
        }
    }

    #[test]
    fn names_are_classified_and_temporaries_never_read() {
        assert_eq!(kind("fix.capsule"), Some(Kind::Capsule));
        assert_eq!(kind("p-1.alice.approval.json"), Some(Kind::Approval));
        assert_eq!(kind("all.export-request"), Some(Kind::Export));
        assert_eq!(kind("notes.txt"), None);
        for n in [".fix.capsule", "fix.capsule.part", "fix.capsule.tmp", ".x.partial"] {
            assert!(in_progress(std::ffi::OsStr::new(n)), "{n}");
        }
        assert!(!in_progress(std::ffi::OsStr::new("fix.capsule")));
    }

    #[test]
    fn hostile_names_get_a_safe_stand_in() {
        use std::os::unix::ffi::OsStrExt as _;
        assert_eq!(safe_name(std::ffi::OsStr::new("fix.capsule")), "fix.capsule");
        for bad in [
            &b"-rf.capsule"[..],
            b"a~b.capsule",
            b"x.capsule.reason",
            b"\xff\xfe.capsule",
            &[b'a'; 200],
            "e\u{1b}[2J\u{202e}.capsule".as_bytes(),
        ] {
            let s = safe_name(std::ffi::OsStr::from_bytes(bad));
            assert!(s.starts_with("invalid-name-") && s.len() == 29, "{s}");
        }
        assert_eq!(
            split_claimed("r-1700000000000-0123abcd~fix.capsule"),
            Some(("r-1700000000000-0123abcd", "fix.capsule"))
        );
        assert_eq!(split_claimed("x~fix.capsule"), None);
        assert_eq!(split_claimed("fix.capsule"), None);
    }

    #[test]
    fn a_file_never_lands_on_another_and_a_leftover_reason_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(free_slot(d, "fix.capsule"), "fix.capsule");
        // Killed between writing the reason and moving the file: the slot
        // is still the file's (not `fix.capsule.2`).
        std::fs::write(d.join("fix.capsule.reason"), "committed\n").unwrap();
        assert_eq!(free_slot(d, "fix.capsule"), "fix.capsule");
        std::fs::write(d.join("fix.capsule"), "first").unwrap();
        assert_eq!(free_slot(d, "fix.capsule"), "fix.capsule.2");
        std::os::unix::fs::symlink("/nonexistent", d.join("fix.capsule.2")).unwrap();
        assert_eq!(free_slot(d, "fix.capsule"), "fix.capsule.3", "a dangling symlink is a file there");
    }

    #[test]
    fn an_answer_ends_refused_only_when_nothing_ran() {
        let a = json!({"state": "refused", "run": "r-1-00000000", "id": "p-1-00000000",
                       "refusal": {"reason_code": "admission.signature", "detail": "bad\u{1b}[31m"}});
        let e = ending_of(&a);
        assert!(e.refused);
        assert!(e.reason.contains("[admission.signature]"));
        let e = ending_of(&json!({"state": "awaiting-approval", "run": "r", "id": "p"}));
        assert!(!e.refused);
    }
}
