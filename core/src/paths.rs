//! Paths a capsule may name: relative to a mount, never escaping it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest path (bytes) a capsule may name inside a mount.
pub const MAX_PATH_LEN: usize = 1024;

/// A `/`-separated path relative to a mount root with no empty, `.` or `..`
/// components, no leading `/`, no backslash and no NUL or control character.
/// A value of this type cannot name anything outside its mount.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MountPath(String);

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path `{0}` is absolute; paths are relative to their mount")]
    Absolute(String),
    #[error("path `{0}` has a `..` component, which would leave the mount")]
    ParentDir(String),
    #[error("path `{0}` has an empty or `.` component; write it normalised")]
    NotNormal(String),
    #[error("path `{0}` contains a backslash, NUL or control character")]
    BadCharacter(String),
    #[error("path is {0} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong(usize),
}

impl MountPath {
    /// Validate `s` as a mount-relative path.
    ///
    /// # Errors
    /// A [`PathError`] naming the offending form.
    pub fn new(s: &str) -> Result<Self, PathError> {
        let shown = || s.chars().take(200).collect::<String>();
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(s.len()));
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute(shown()));
        }
        if s.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(PathError::BadCharacter(shown()));
        }
        for part in s.split('/') {
            match part {
                ".." => return Err(PathError::ParentDir(shown())),
                "" | "." => return Err(PathError::NotNormal(shown())),
                _ => {}
            }
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for MountPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MountPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Serialize for MountPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MountPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether `name` is a valid logical name (mounts, endpoints, env vars,
/// capsule names): 1..=64 characters of `[A-Za-z0-9._-]`, starting with an
/// alphanumeric character.
pub fn is_logical_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_normal_paths() {
        for ok in ["a", "conf/app.toml", "a/b/c.d", "..hidden", "x..y"] {
            assert_eq!(MountPath::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(MountPath::new("../etc/passwd"), Err(PathError::ParentDir(_))));
        assert!(matches!(MountPath::new("a/../../b"), Err(PathError::ParentDir(_))));
        assert!(matches!(MountPath::new("/etc/passwd"), Err(PathError::Absolute(_))));
        assert!(matches!(MountPath::new("a//b"), Err(PathError::NotNormal(_))));
        assert!(matches!(MountPath::new("./a"), Err(PathError::NotNormal(_))));
        assert!(matches!(MountPath::new("a/"), Err(PathError::NotNormal(_))));
        assert!(matches!(MountPath::new("a\\..\\b"), Err(PathError::BadCharacter(_))));
        assert!(matches!(MountPath::new("a\0b"), Err(PathError::BadCharacter(_))));
        assert!(matches!(MountPath::new(""), Err(PathError::Empty)));
        assert!(matches!(MountPath::new(&"a".repeat(2000)), Err(PathError::TooLong(2000))));
    }

    proptest! {
        #[test]
        fn accepted_paths_never_escape(s in "[a-z./\\\\]{0,24}") {
            if let Ok(p) = MountPath::new(&s) {
                let mut depth = 0i32;
                for c in p.components() {
                    prop_assert!(c != ".." && c != "." && !c.is_empty());
                    depth += 1;
                }
                prop_assert!(depth > 0);
                prop_assert!(!p.as_str().starts_with('/'));
            }
        }
    }
}
