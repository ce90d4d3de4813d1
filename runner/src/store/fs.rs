//! File-system helpers the runner's state directory needs, in one place.
//!
//! [`remove_tree`] deletes a directory tree that a capsule shaped (a staging
//! copy after `apply`) without trusting its shape: it never follows a
//! symlink, holds at most two descriptors at any time whatever the depth
//! (a 1,500-level tree under `ulimit -n 1024` made `std::fs::remove_dir_all`
//! fail with `EMFILE`), never builds a path longer than one name (so
//! `ENAMETOOLONG` cannot stop it), and makes directories the capsule locked
//! (mode 000) removable first.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `open(2)` flags for descending into a directory: never through a symlink.
const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `openat(dir, name)` as a directory, making it traversable first if its
/// mode locks us out (a capsule may `chmod 000` a directory it made).
fn open_dir_at(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    let open = || {
        // SAFETY: a valid descriptor and a NUL-terminated name.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), DIR_FLAGS) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: `fd` is a fresh descriptor we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    match open() {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            // O_NOFOLLOW above refused symlinks; this name was a directory
            // when it was listed, and only the runner works in its state dir.
            // SAFETY: as above.
            check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), 0o700, 0) })?;
            open()
        }
        other => other,
    }
}

/// List `dir`: unlink every non-directory at once and return the names of
/// its subdirectories.
fn empty_files(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    // fdopendir takes ownership of the descriptor it is given: hand it a dup.
    // SAFETY: a valid descriptor.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is ours; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // Rewind: the dup shares its offset with `dir`, which may have been read.
    // SAFETY: a valid stream.
    unsafe { libc::rewinddir(stream) };
    let mut dirs = Vec::new();
    let result = loop {
        // SAFETY: a valid stream; errno is reset to tell the end from an error.
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(stream) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 { Ok(()) } else { Err(e) };
        }
        // SAFETY: readdir returned a valid entry with a NUL-terminated name.
        let (name, kind) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()), (*ent).d_type) };
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let is_dir = match kind {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => {
                // SAFETY: zeroed stat is a valid out-parameter.
                let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
                // SAFETY: valid descriptor, name and out-parameter.
                let r =
                    unsafe { libc::fstatat64(dir.as_raw_fd(), name.as_ptr(), &raw mut st, libc::AT_SYMLINK_NOFOLLOW) };
                if let Err(e) = check(r) {
                    break Err(e);
                }
                st.st_mode & libc::S_IFMT == libc::S_IFDIR
            }
            _ => false,
        };
        if is_dir {
            dirs.push(name.to_owned());
        } else {
            // SAFETY: valid descriptor and name.
            if let Err(e) = check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
                && e.kind() != io::ErrorKind::NotFound
            {
                break Err(e);
            }
        }
    };
    // SAFETY: the stream is valid and closed once (closing `dup`).
    unsafe { libc::closedir(stream) };
    result.map(|()| dirs)
}

/// Remove the tree at `path` (a directory, or anything else, which is
/// unlinked). Missing is not an error.
///
/// # Errors
/// The first I/O error; what was removed until then stays removed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let c = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), DIR_FLAGS) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(()),
            // A symlink or a file where a directory was expected: unlink it.
            Some(libc::ENOTDIR | libc::ELOOP) => std::fs::remove_file(path),
            _ => Err(e),
        };
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let mut cur = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: valid descriptor; we own the tree (write permission to empty it).
    unsafe { libc::fchmod(cur.as_raw_fd(), 0o700) };
    // One frame per level: the name we came down by, and the subdirectories
    // still to remove. Memory grows with the tree; descriptors do not.
    let mut frames: Vec<(Option<CString>, Vec<CString>)> = vec![(None, empty_files(&cur)?)];
    loop {
        let Some((_, pending)) = frames.last_mut() else { unreachable!("the root frame is popped last") };
        if let Some(sub) = pending.pop() {
            let child = match open_dir_at(&cur, &sub) {
                Ok(c) => c,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                    // SAFETY: valid descriptor and name.
                    check(unsafe { libc::unlinkat(cur.as_raw_fd(), sub.as_ptr(), 0) })?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // SAFETY: valid descriptor.
            unsafe { libc::fchmod(child.as_raw_fd(), 0o700) };
            cur = child;
            let subs = empty_files(&cur)?;
            frames.push((Some(sub), subs));
            continue;
        }
        // Everything below this directory is gone; anything created since
        // (nothing should be) is found by a last listing.
        let again = empty_files(&cur)?;
        if !again.is_empty() {
            frames.last_mut().expect("non-empty").1 = again;
            continue;
        }
        let (name, _) = frames.pop().expect("non-empty");
        let Some(name) = name else {
            drop(cur);
            return std::fs::remove_dir(path);
        };
        // Up one level by `..`: this is the directory we came down from,
        // since nothing else renames inside the runner's state directory.
        let parent = open_dir_at(&cur, c"..")?;
        cur = parent;
        // SAFETY: valid descriptor and name.
        check(unsafe { libc::unlinkat(cur.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })?;
    }
}

/// Bytes held by the regular files under `path` (a runner-owned tree;
/// symlinks are not followed). Missing is zero.
///
/// # Errors
/// I/O errors while walking.
pub fn tree_size(path: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn removes_a_tree_deeper_than_the_descriptor_limit_and_longer_than_path_max() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("stage");
        std::fs::create_dir(&root).unwrap();
        // 3,000 levels of 8-character names: ~27 KB of path, far past
        // PATH_MAX, and more levels than the default 1,024 descriptors.
        let mut fd = std::fs::File::open(&root).unwrap();
        for i in 0..3000 {
            let name = cstr(format!("level{i:03}").as_bytes()).unwrap();
            // SAFETY: valid descriptor and name.
            unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o700) };
            if i % 500 == 0 {
                let f = cstr(b"file").unwrap();
                // SAFETY: as above.
                let ffd = unsafe { libc::openat(fd.as_raw_fd(), f.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600) };
                // SAFETY: a fresh descriptor.
                unsafe { libc::close(ffd) };
            }
            // SAFETY: as above.
            let next = unsafe { libc::openat(fd.as_raw_fd(), name.as_ptr(), DIR_FLAGS) };
            assert!(next >= 0);
            // SAFETY: a fresh descriptor we own.
            fd = unsafe { std::fs::File::from_raw_fd(next) };
        }
        drop(fd);
        // Lower the descriptor limit for this process below the depth.
        let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: valid out-parameter.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut old) };
        let low = libc::rlimit { rlim_cur: 256.min(old.rlim_max), rlim_max: old.rlim_max };
        // SAFETY: valid limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const low) };
        let r = remove_tree(&root);
        // SAFETY: restore.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const old) };
        r.unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn never_follows_symlinks_and_opens_locked_directories() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep.txt"), "keep").unwrap();
        let root = t.path().join("stage");
        std::fs::create_dir_all(root.join("a/locked/inner")).unwrap();
        std::fs::write(root.join("a/locked/inner/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/locked/link")).unwrap();
        std::fs::set_permissions(root.join("a/locked/inner"), std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::set_permissions(root.join("a/locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert_eq!(std::fs::read_to_string(outside.join("keep.txt")).unwrap(), "keep");
        // A symlink given as the root is unlinked, not followed; missing is fine.
        std::os::unix::fs::symlink(&outside, t.path().join("l")).unwrap();
        remove_tree(&t.path().join("l")).unwrap();
        assert!(outside.join("keep.txt").exists());
        remove_tree(&t.path().join("missing")).unwrap();
    }
}
