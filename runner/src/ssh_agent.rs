//! A minimal ssh-agent client (draft-miller-ssh-agent): list identities and
//! ask the agent to sign. The private key never leaves the agent (or the
//! hardware token behind it).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ssh_key::{PublicKey, Signature};

const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;
const FAILURE: u8 = 5;
/// Largest reply accepted from the agent.
const MAX_REPLY: usize = 256 * 1024;

/// An agent reachable over a Unix socket.
#[derive(Debug)]
pub struct Agent {
    socket: PathBuf,
}

fn put_string(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend((s.len() as u32).to_be_bytes());
    buf.extend(s);
}

fn take_string<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    if buf.len() < 4 {
        bail!("truncated agent reply");
    }
    let n = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    let s = buf.get(4..4 + n).context("truncated agent reply")?;
    *buf = &buf[4 + n..];
    Ok(s)
}

impl Agent {
    /// The agent named by `SSH_AUTH_SOCK`.
    ///
    /// # Errors
    /// If the variable is unset.
    pub fn from_env() -> Result<Self> {
        let socket = std::env::var_os("SSH_AUTH_SOCK")
            .context("SSH_AUTH_SOCK is not set: start ssh-agent and ssh-add your key")?;
        Ok(Self { socket: socket.into() })
    }

    fn call(&self, body: &[u8]) -> Result<Vec<u8>> {
        let mut s = UnixStream::connect(&self.socket)
            .with_context(|| format!("cannot connect to ssh-agent at {}", self.socket.display()))?;
        s.write_all(&(body.len() as u32).to_be_bytes())?;
        s.write_all(body)?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_REPLY {
            bail!("ssh-agent sent a reply of {len} bytes");
        }
        let mut reply = vec![0u8; len];
        s.read_exact(&mut reply)?;
        Ok(reply)
    }

    /// The public keys the agent holds, with their comments.
    ///
    /// # Errors
    /// On protocol or I/O errors.
    pub fn identities(&self) -> Result<Vec<(PublicKey, String)>> {
        let reply = self.call(&[REQUEST_IDENTITIES])?;
        if reply[0] != IDENTITIES_ANSWER {
            bail!("ssh-agent refused to list keys (reply {})", reply[0]);
        }
        let mut rest = &reply[1..];
        if rest.len() < 4 {
            bail!("truncated agent reply");
        }
        let n = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
        rest = &rest[4..];
        let mut out = Vec::new();
        for _ in 0..n.min(1024) {
            let blob = take_string(&mut rest)?;
            let comment = String::from_utf8_lossy(take_string(&mut rest)?).into_owned();
            // Keys of types we cannot parse are skipped, not fatal.
            if let Ok(k) = PublicKey::from_bytes(blob) {
                out.push((k, comment));
            }
        }
        Ok(out)
    }

    /// Ask the agent to sign `data` with `key`.
    ///
    /// # Errors
    /// If the agent refuses (key not loaded, confirmation declined, token absent).
    pub fn sign(&self, key: &PublicKey, data: &[u8]) -> Result<Signature> {
        let mut body = vec![SIGN_REQUEST];
        put_string(&mut body, &key.to_bytes()?);
        put_string(&mut body, data);
        body.extend(0u32.to_be_bytes()); // flags: none needed for Ed25519 / sk-Ed25519
        let reply = self.call(&body)?;
        match reply[0] {
            SIGN_RESPONSE => {
                let mut rest = &reply[1..];
                Ok(Signature::try_from(take_string(&mut rest)?)?)
            }
            FAILURE => bail!("ssh-agent refused to sign (is the key loaded, the token present, the touch confirmed?)"),
            other => bail!("unexpected ssh-agent reply {other}"),
        }
    }
}
