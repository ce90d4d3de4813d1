//! C2SP signed notes (`c2sp.org/signed-note`), Ed25519 keys, and the
//! `c2sp.org/tlog-checkpoint` and `c2sp.org/tlog-proof` formats built on them.
//!
//! A note is a UTF-8 text ending in a newline, a blank line, then signature
//! lines `— <key name> <base64(key id ‖ signature)>`. An Ed25519 key's id is
//! the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key). Verifier keys
//! are written `<name>+<hex key id>+<base64(0x01 ‖ public key)>`, signer keys
//! `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>`.
//!
//! Opening a note: signatures by unknown keys are ignored; a signature by a
//! known key (same name and key id) must verify (`verify_strict`); at least one
//! must. This matches `golang.org/x/mod/sumdb/note` and its test values.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::merkle::Hash;

const ALG_ED25519: u8 = 0x01;
const DASH: &str = "\u{2014} ";
/// Largest note accepted.
pub const MAX_NOTE: usize = 1 << 20;

/// Why a note, key or checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    #[error("malformed key: {0}")]
    Key(String),
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("the signature by `{0}` does not verify")]
    BadSignature(String),
    #[error("no signature by a trusted key")]
    NoTrustedSignature,
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(char::is_whitespace)
}

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A key that verifies notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    pub name: String,
    id: [u8; 4],
    /// Checked not to be of small order when made (`verify_strict`'s key check).
    key: crate::strict::StrongKey,
}

impl NoteVerifier {
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key(format!("invalid key name `{name}`")));
        }
        let Some(strong) = crate::strict::StrongKey::new(key) else {
            return Err(NoteError::Key("weak Ed25519 key".into()));
        };
        Ok(Self { name: name.to_owned(), id: key_id(name, key.as_bytes()), key: strong })
    }

    /// Parse `<name>+<hex id>+<base64(0x01 ‖ key)>`.
    ///
    /// # Errors
    /// On any malformed part, an unknown algorithm, or a key id that does not match.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("expected <name>+<hash>+<key>".into()));
        };
        let id = hex::decode(id).map_err(|_| NoteError::Key("key id is not hex".into()))?;
        let raw = B64.decode(key).map_err(|_| NoteError::Key("key is not base64".into()))?;
        let [ALG_ED25519, rest @ ..] = raw.as_slice() else {
            return Err(NoteError::Key("unknown key algorithm".into()));
        };
        let bytes: [u8; 32] = rest.try_into().map_err(|_| NoteError::Key("Ed25519 keys are 32 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| NoteError::Key("invalid Ed25519 key".into()))?;
        let v = Self::new(name, key)?;
        if v.id.as_slice() != id.as_slice() {
            return Err(NoteError::Key("key id does not match the key".into()));
        }
        Ok(v)
    }

    /// The `<name>+<hex id>+<base64>` form.
    pub fn to_vkey(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex::encode(self.id), B64.encode(raw))
    }

    /// The key's 32 bytes.
    pub fn key_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// `verify_strict`'s verdict on `signature` over `message` (the key was
    /// checked when this verifier was made).
    ///
    /// # Errors
    /// If the signature does not verify.
    pub fn verify_strict(
        &self,
        message: &[u8],
        signature: &ed25519_dalek::Signature,
    ) -> Result<(), ed25519_dalek::SignatureError> {
        self.key.verify_strict(message, signature)
    }

    /// A short name for the key a person can compare when it is read out
    /// or published: `SHA256:` and the unpadded base64 of the SHA-256 of
    /// the raw 32-byte Ed25519 public key (the form of OpenSSH
    /// fingerprints, over the raw key rather than an SSH key blob).
    pub fn fingerprint(&self) -> String {
        use base64::engine::general_purpose::STANDARD_NO_PAD;
        format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(self.key.as_bytes())))
    }
}

/// A key that signs notes.
pub struct NoteSigner {
    verifier: NoteVerifier,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoteSigner({})", self.verifier.to_vkey())
    }
}

impl NoteSigner {
    pub fn new(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        Ok(Self { verifier: NoteVerifier::new(name, key.verifying_key())?, key })
    }

    /// Parse `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>`.
    ///
    /// # Errors
    /// On any malformed part or a key id that does not match.
    pub fn parse(skey: &str) -> Result<Self, NoteError> {
        let rest = skey.trim().strip_prefix("PRIVATE+KEY+").ok_or_else(|| NoteError::Key("not a signer key".into()))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("expected PRIVATE+KEY+<name>+<hash>+<key>".into()));
        };
        let raw = B64.decode(key).map_err(|_| NoteError::Key("key is not base64".into()))?;
        let [ALG_ED25519, seed @ ..] = raw.as_slice() else {
            return Err(NoteError::Key("unknown key algorithm".into()));
        };
        let seed: [u8; 32] = seed.try_into().map_err(|_| NoteError::Key("Ed25519 seeds are 32 bytes".into()))?;
        let s = Self::new(name, SigningKey::from_bytes(&seed))?;
        if hex::encode(s.verifier.id) != id {
            return Err(NoteError::Key("key id does not match the key".into()));
        }
        Ok(s)
    }

    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// A bare Ed25519 signature by this key, for the other domain-separated
    /// messages this crate signs with the runner's identity key: webhook
    /// notifications (`crate::webhook`) and outbound NATS messages
    /// (`crate::outbound`), whose signing inputs never end in a newline and
    /// so are never a note text, and whose first lines differ. Nothing else
    /// may call it.
    pub(crate) fn sign_raw(&self, message: &[u8]) -> ed25519_dalek::Signature {
        self.key.sign(message)
    }

    /// The signature line for `text` (which must end in a newline).
    pub fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut raw = self.verifier.id.to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        format!("{DASH}{} {}\n", self.verifier.name, B64.encode(raw))
    }

    /// Sign `text` into a note.
    ///
    /// # Errors
    /// If the text is not a valid note text.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        Ok(format!("{text}\n{}", self.signature_line(text)))
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("text must end in a newline".into()));
    }
    if text.contains("\n\n") {
        return Err(NoteError::Malformed("text must not contain a blank line".into()));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed("text contains control characters".into()));
    }
    Ok(())
}

/// A verified note: its text and the names of the keys whose signatures verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedNote {
    pub text: String,
    pub signed_by: Vec<String>,
    /// Every signature line, verified or ignored (unknown keys, duplicates):
    /// formats that allow exactly one signer check this.
    pub signature_lines: usize,
}

/// Open a note with the given verifiers.
///
/// # Errors
/// Malformed notes, a known key's bad signature, or no trusted signature.
pub fn open(note: &str, verifiers: &[NoteVerifier]) -> Result<OpenedNote, NoteError> {
    if note.len() > MAX_NOTE {
        return Err(NoteError::Malformed("too large".into()));
    }
    let split = note.rfind("\n\n").ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    check_text(text)?;
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(NoteError::Malformed("signature lines must end in a newline".into()));
    }
    let mut signed_by = Vec::new();
    let mut signature_lines = 0;
    for line in sigs.lines() {
        signature_lines += 1;
        let rest =
            line.strip_prefix(DASH).ok_or_else(|| NoteError::Malformed(format!("bad signature line `{line}`")))?;
        let (name, sig) =
            rest.split_once(' ').ok_or_else(|| NoteError::Malformed(format!("bad signature line `{line}`")))?;
        let raw = B64.decode(sig).map_err(|_| NoteError::Malformed("signature is not base64".into()))?;
        if raw.len() < 5 || !valid_name(name) {
            return Err(NoteError::Malformed(format!("bad signature line `{line}`")));
        }
        let (id, sig) = raw.split_at(4);
        let Some(v) = verifiers.iter().find(|v| v.name == name && v.id == id) else {
            continue; // An unknown key: ignored, as the spec requires.
        };
        let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| NoteError::BadSignature(name.to_owned()))?;
        v.verify_strict(text.as_bytes(), &sig).map_err(|_| NoteError::BadSignature(name.to_owned()))?;
        if !signed_by.contains(&v.name) {
            signed_by.push(v.name.clone());
        }
    }
    if signed_by.is_empty() {
        return Err(NoteError::NoTrustedSignature);
    }
    Ok(OpenedNote { text: text.to_owned(), signed_by, signature_lines })
}

/// Who a note says signed it, unverified: each signature line's key name
/// and key id (hex, as in a `<name>+<id>+<key>` verifier key), for naming
/// the key a reader does not have. Malformed lines are skipped.
pub fn claimed_signers(note: &str) -> Vec<(String, String)> {
    let Some(split) = note.rfind("\n\n") else { return Vec::new() };
    note[split + 2..]
        .lines()
        .filter_map(|line| {
            let (name, sig) = line.strip_prefix(DASH)?.split_once(' ')?;
            let raw = B64.decode(sig).ok()?;
            (raw.len() >= 5 && valid_name(name)).then(|| (name.to_owned(), hex::encode(&raw[..4])))
        })
        .collect()
}

/// A `c2sp.org/tlog-checkpoint` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root, each followed by a newline.
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// The checkpoint a signed note claims, its signatures not checked: to
    /// place or order notes before [`open`] verifies the one that is used.
    ///
    /// # Errors
    /// [`NoteError::Malformed`] without a blank line before the signatures;
    /// otherwise as [`Checkpoint::parse`].
    pub fn claimed(note: &str) -> Result<Self, NoteError> {
        let end =
            note.find("\n\n").ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        Self::parse(&note[..=end])
    }

    /// Parse a checkpoint note text (extension lines are refused: we never write them).
    ///
    /// # Errors
    /// [`NoteError::Checkpoint`].
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::Checkpoint(why.to_owned());
        let lines: Vec<&str> = text.strip_suffix('\n').ok_or_else(|| bad("no final newline"))?.split('\n').collect();
        let [origin, size, root] = lines.as_slice() else {
            return Err(bad("expected exactly origin, size and root lines"));
        };
        if origin.is_empty() {
            return Err(bad("empty origin"));
        }
        if size.is_empty() || (size.len() > 1 && size.starts_with('0')) || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("tree size must be a decimal without leading zeros"));
        }
        let size: u64 = size.parse().map_err(|_| bad("tree size out of range"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("root must be 32 bytes of base64"))?;
        Ok(Self { origin: (*origin).to_owned(), size, root })
    }
}

/// A `c2sp.org/tlog-proof@v1`: an inclusion proof for one entry plus the
/// signed checkpoint it leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    pub index: u64,
    pub hashes: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

impl TlogProof {
    pub fn encode(&self) -> String {
        let mut s = format!("c2sp.org/tlog-proof@v1\nindex {}\n", self.index);
        for h in &self.hashes {
            s.push_str(&B64.encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }

    /// # Errors
    /// [`NoteError::Malformed`] on any deviation from the format.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::Malformed(format!("tlog-proof: {why}"));
        let (head, checkpoint) = text.split_once("\n\n").ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some("c2sp.org/tlog-proof@v1") {
            return Err(bad("missing the c2sp.org/tlog-proof@v1 header"));
        }
        let mut line = lines.next().ok_or_else(|| bad("missing index"))?;
        if line.starts_with("extra ") {
            line = lines.next().ok_or_else(|| bad("missing index"))?;
        }
        let index = line.strip_prefix("index ").and_then(|i| i.parse().ok()).ok_or_else(|| bad("bad index line"))?;
        let hashes = lines
            .map(|l| B64.decode(l).ok().and_then(|h| h.try_into().ok()).ok_or_else(|| bad("bad hash line")))
            .collect::<Result<Vec<Hash>, _>>()?;
        Ok(Self { index, hashes, checkpoint: checkpoint.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/signed-notes.json");
        serde_json::from_slice(&std::fs::read(path).expect("../shared/vectors/signed-notes.json must exist")).unwrap()
    }

    #[test]
    fn c2sp_example_verifies() {
        let v = vectors();
        let ex = &v["c2sp_example"];
        let vkey = NoteVerifier::parse(ex["vkey"].as_str().unwrap()).unwrap();
        let opened = open(ex["note"].as_str().unwrap(), std::slice::from_ref(&vkey));
        assert_eq!(opened.is_ok(), ex["want_verified"].as_bool().unwrap(), "{opened:?}");
        assert_eq!(vkey.to_vkey(), ex["vkey"].as_str().unwrap());
    }

    #[test]
    fn go_note_signature_is_reproduced_and_unknown_keys_ignored() {
        let v = vectors();
        let g = &v["go_note"];
        let signer = NoteSigner::parse(g["skey"].as_str().unwrap()).unwrap();
        let text = g["text"].as_str().unwrap();
        assert_eq!(signer.signature_line(text), g["signature_line"].as_str().unwrap());
        let vkey = NoteVerifier::parse(g["vkey"].as_str().unwrap()).unwrap();
        assert_eq!(signer.verifier(), &vkey);
        let note =
            format!("{text}\n{}{}", g["signature_line"].as_str().unwrap(), g["other_signature_line"].as_str().unwrap());
        let opened = open(&note, std::slice::from_ref(&vkey)).unwrap();
        assert_eq!(opened.signed_by, ["PeterNeumann"]);
        assert_eq!(opened.text, text);
        // With only the other key, nothing verifies.
        let other = NoteVerifier::parse(g["other_vkey"].as_str().unwrap()).unwrap();
        assert!(open(&format!("{text}\n{}", g["signature_line"].as_str().unwrap()), &[other]).is_err());
        for bad in g["bad_vkeys"].as_array().unwrap() {
            assert!(NoteVerifier::parse(bad.as_str().unwrap()).is_err(), "{bad}");
        }
        // A flipped text byte fails for the known key.
        let tampered = note.replacen("cryptography", "cryptographY", 1);
        assert!(matches!(open(&tampered, &[vkey]), Err(NoteError::BadSignature(_))));
    }

    #[test]
    fn tree_note_body_matches_go_sumdb() {
        let v = vectors();
        let t = &v["go_tree_note"];
        let c = Checkpoint {
            origin: "go.sum database tree".into(),
            size: t["size"].as_u64().unwrap(),
            root: crate::merkle::leaf_hash(t["record"].as_str().unwrap().as_bytes()),
        };
        assert_eq!(c.text(), t["body"].as_str().unwrap());
        assert_eq!(Checkpoint::parse(&c.text()).unwrap(), c);
        assert!(Checkpoint::parse("o\n012\nAAAA\n").is_err());
    }

    #[test]
    fn tlog_proof_round_trip() {
        let signer = NoteSigner::new("runner.example", SigningKey::from_bytes(&[3; 32])).unwrap();
        let cp = signer.sign(&Checkpoint { origin: "runner.example".into(), size: 3, root: [7; 32] }.text()).unwrap();
        let p = TlogProof { index: 1, hashes: vec![[1; 32], [2; 32]], checkpoint: cp };
        let text = p.encode();
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nindex 1\n"));
        assert_eq!(TlogProof::parse(&text).unwrap(), p);
        let opened = open(&TlogProof::parse(&text).unwrap().checkpoint, &[signer.verifier().clone()]).unwrap();
        assert_eq!(Checkpoint::parse(&opened.text).unwrap().size, 3);
    }

    #[test]
    fn claimed_signers_name_the_key_of_each_signature_line_unverified() {
        let signer = NoteSigner::new("runner.example", SigningKey::from_bytes(&[3; 32])).unwrap();
        let note = signer.sign("runner.example\n3\nAAAA\n").unwrap();
        let id = signer.verifier().to_vkey().split('+').nth(1).unwrap().to_owned();
        assert_eq!(claimed_signers(&note), [("runner.example".to_owned(), id)]);
        assert!(claimed_signers("no signatures").is_empty());
        assert!(claimed_signers("text\n\n\u{2014} bad name!! AAAAAAAA\n").is_empty());
    }
}
