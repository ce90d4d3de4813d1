//! Console sessions and WebAuthn ceremonies in progress, in memory only.
//!
//! A session token is 32 random bytes, sent once in a `__Host-` cookie and
//! kept here only as its SHA-256 (a memory dump does not yield live
//! cookies). Sessions end at a fixed time after sign-in (no sliding
//! renewal), on sign-out, and at restart. Both maps are bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use edge_core::approval::Statement;
use hyper::header::{COOKIE, HeaderMap, HeaderValue};
use rand_core::RngCore as _;
use sha2::{Digest as _, Sha256};
use webauthn_rs::prelude::{PasskeyAuthentication, PasskeyRegistration};

/// The session cookie (the `__Host-` prefix: Secure, no Domain, Path=/).
const COOKIE_NAME: &str = "__Host-edge-session";
/// Most sessions and ceremonies held at once.
const MAX_SESSIONS: usize = 4096;
const MAX_CEREMONIES: usize = 1024;
/// Ceremonies in progress for one approver name.
const MAX_PER_PRINCIPAL: usize = 4;

/// A signed-in approver.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    key: [u8; 32],
    pub principal: String,
    pub csrf: String,
    expires: Instant,
}

/// A WebAuthn ceremony started and not yet finished.
pub(crate) enum Ceremony {
    Enroll { code: String, principal: String, state: PasskeyRegistration },
    SignIn { principal: String, state: PasskeyAuthentication },
}

impl Ceremony {
    fn principal(&self) -> &str {
        match self {
            Ceremony::Enroll { principal, .. } | Ceremony::SignIn { principal, .. } => principal,
        }
    }
}

struct Held {
    session: Session,
    /// Statements being signed, by proposal (one per proposal).
    pending: HashMap<String, Statement>,
}

pub(crate) struct Sessions {
    ttl: Duration,
    live: Mutex<HashMap<[u8; 32], Held>>,
    ceremonies: Mutex<HashMap<String, (Ceremony, Instant)>>,
}

fn random() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    b
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("__Host-edge-session=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self { ttl, live: Mutex::default(), ceremonies: Mutex::default() }
    }

    /// Sign `principal` in: the `Set-Cookie` value and the session.
    pub(crate) fn open(&self, principal: &str) -> Result<(HeaderValue, Session), &'static str> {
        let token = random();
        let key: [u8; 32] = Sha256::digest(token).into();
        let now = Instant::now();
        let session =
            Session { key, principal: principal.to_owned(), csrf: hex::encode(random()), expires: now + self.ttl };
        let mut live = lock(&self.live);
        live.retain(|_, h| h.session.expires > now);
        if live.len() >= MAX_SESSIONS {
            return Err("too many people are signed in: try again later");
        }
        live.insert(key, Held { session: session.clone(), pending: HashMap::new() });
        let cookie = format!(
            "{COOKIE_NAME}={}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token),
            self.ttl.as_secs()
        );
        Ok((HeaderValue::from_str(&cookie).expect("a cookie of base64url and ASCII"), session))
    }

    /// The session a request's cookie names: `Err(Some(note))` when it has
    /// ended (the sign-in page says so), `Err(None)` when there is none.
    pub(crate) fn find(&self, headers: &HeaderMap) -> Result<Session, Option<&'static str>> {
        let token = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
            .next()
            .ok_or(None)?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| None)?;
        let key: [u8; 32] = Sha256::digest(&raw).into();
        let mut live = lock(&self.live);
        match live.get(&key) {
            Some(h) if h.session.expires > Instant::now() => Ok(h.session.clone()),
            Some(_) => {
                live.remove(&key);
                Err(Some("Your session ended: sign in again."))
            }
            None => Err(Some("Your session ended (or the runner restarted): sign in again.")),
        }
    }

    pub(crate) fn end(&self, s: &Session) {
        lock(&self.live).remove(&s.key);
    }

    /// Hold the statement `s` is about to sign for `proposal`.
    pub(crate) fn hold(&self, s: &Session, proposal: &str, statement: Statement) {
        if let Some(h) = lock(&self.live).get_mut(&s.key) {
            h.pending.insert(proposal.to_owned(), statement);
        }
    }

    /// Take the statement held for `proposal` (signed once, or not at all).
    pub(crate) fn release(&self, s: &Session, proposal: &str) -> Option<Statement> {
        lock(&self.live).get_mut(&s.key).and_then(|h| h.pending.remove(proposal))
    }

    /// Start a ceremony; its id goes to the browser.
    pub(crate) fn start(&self, c: Ceremony, ttl: Duration) -> Result<String, &'static str> {
        let now = Instant::now();
        let mut all = lock(&self.ceremonies);
        all.retain(|_, (_, until)| *until > now);
        // Someone starting sign-ins for a name over and over (to fill the
        // table) only replaces that name's own oldest ceremonies.
        let who = c.principal().to_owned();
        let mut mine: Vec<(String, Instant)> =
            all.iter().filter(|(_, (o, _))| o.principal() == who).map(|(k, (_, t))| (k.clone(), *t)).collect();
        if mine.len() >= MAX_PER_PRINCIPAL {
            mine.sort_by_key(|(_, t)| *t);
            for (k, _) in mine.iter().take(mine.len() + 1 - MAX_PER_PRINCIPAL) {
                all.remove(k);
            }
        }
        if all.len() >= MAX_CEREMONIES {
            return Err("too many sign-ins in progress: try again in a few minutes");
        }
        let id = hex::encode(random());
        all.insert(id.clone(), (c, now + ttl));
        Ok(id)
    }

    /// Finish a ceremony (once): None if unknown or timed out.
    pub(crate) fn take(&self, id: &str) -> Option<Ceremony> {
        let (c, until) = lock(&self.ceremonies).remove(id)?;
        (until > Instant::now()).then_some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie_header(set_cookie: &HeaderValue) -> HeaderMap {
        let pair = set_cookie.to_str().unwrap().split(';').next().unwrap().to_owned();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&format!("other=1; {pair}")).unwrap());
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends() {
        let s = Sessions::new(Duration::from_secs(60));
        let (cookie, session) = s.open("alice").unwrap();
        let text = cookie.to_str().unwrap();
        for attr in ["__Host-edge-session=", "Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=60"] {
            assert!(text.contains(attr), "{text}");
        }
        let found = s.find(&cookie_header(&cookie)).unwrap();
        assert_eq!(found.principal, "alice");
        assert_eq!(found.csrf, session.csrf);
        s.end(&found);
        assert!(s.find(&cookie_header(&cookie)).is_err());
    }

    #[test]
    fn an_expired_or_forged_cookie_is_no_session() {
        let s = Sessions::new(Duration::from_millis(1));
        let (cookie, _) = s.open("alice").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.find(&cookie_header(&cookie)).unwrap_err(), Some("Your session ended: sign in again."));
        let mut forged = HeaderMap::new();
        forged.insert(COOKIE, HeaderValue::from_static("__Host-edge-session=AAAA"));
        assert!(s.find(&forged).is_err());
        assert_eq!(s.find(&HeaderMap::new()).unwrap_err(), None);
    }

    fn webauthn() -> webauthn_rs::prelude::Webauthn {
        webauthn_rs::prelude::WebauthnBuilder::new(
            "localhost",
            &webauthn_rs::prelude::Url::parse("https://localhost:8444").unwrap(),
        )
        .unwrap()
        .build()
        .unwrap()
    }

    #[test]
    fn a_ceremony_finishes_once() {
        let s = Sessions::new(Duration::from_secs(60));
        let wa = webauthn();
        let (_, state) = wa.start_passkey_registration(webauthn_rs::prelude::Uuid::new_v4(), "a", "a", None).unwrap();
        let id = s
            .start(Ceremony::Enroll { code: "c".into(), principal: "a".into(), state }, Duration::from_secs(60))
            .unwrap();
        assert!(s.take(&id).is_some());
        assert!(s.take(&id).is_none());
    }

    #[test]
    fn one_name_cannot_fill_the_ceremony_table() {
        let s = Sessions::new(Duration::from_secs(60));
        let wa = webauthn();
        let start = |who: &str| {
            let (_, state) =
                wa.start_passkey_registration(webauthn_rs::prelude::Uuid::new_v4(), who, who, None).unwrap();
            s.start(Ceremony::Enroll { code: "c".into(), principal: who.into(), state }, Duration::from_secs(60))
                .unwrap()
        };
        let other = start("bob");
        let first = start("mallory");
        for _ in 0..50 {
            start("mallory");
        }
        assert_eq!(lock(&s.ceremonies).len(), MAX_PER_PRINCIPAL + 1);
        assert!(s.take(&first).is_none(), "the oldest of the flood was kept");
        assert!(s.take(&other).is_some(), "another name's ceremony was dropped");
    }
}
