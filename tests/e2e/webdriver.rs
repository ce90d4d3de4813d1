//! A minimal W3C WebDriver client for headless Chromium through Debian's
//! `chromedriver`, with the WebAuthn virtual-authenticator extension (the
//! same one Chrome DevTools' WebAuthn domain drives). Plain HTTP/1.1 over a
//! loopback TCP socket: nothing else is needed.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session; both end on drop.
pub(crate) struct Browser {
    driver: Child,
    port: u16,
    session: String,
    pub authenticator: Option<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether this machine can run the browser tests (chromium and chromedriver).
pub(crate) fn available() -> bool {
    ["chromium", "chromedriver"].iter().all(|b| {
        Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    })
}

impl Browser {
    /// Start chromedriver and a headless Chromium that trusts the server
    /// certificate whose SPKI SHA-256 (base64) is `spki` — a real TLS
    /// connection to a certificate the browser accepts, so WebAuthn runs.
    pub(crate) fn start(profile: &Path, spki: &str) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) must be installed");
        let mut b = Browser { driver, port, session: String::new(), authenticator: None };
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.call("GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,2400",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--ignore-certificate-errors-spki-list={spki}"),
                ],
            },
        }}});
        let v = b.call("POST", "/session", Some(caps)).expect("a browser session");
        b.session = v["sessionId"].as_str().expect("a session id").to_owned();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        // chromedriver keeps the connection open: read the header, then
        // exactly Content-Length bytes (or chunks to the last one).
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        let (head, mut rest) = loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the connection closed before the answer".into());
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break (String::from_utf8_lossy(&raw[..i]).to_string(), raw[i + 4..].to_vec());
            }
        };
        let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("no status")?;
        let lower = head.to_ascii_lowercase();
        let length =
            lower.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = lower.contains("transfer-encoding: chunked") || lower.contains("transfer-encoding:chunked");
        loop {
            let done = match length {
                Some(n) => rest.len() >= n,
                None if chunked => rest.windows(5).any(|w| w == b"0\r\n\r\n"),
                None => false,
            };
            if done {
                break;
            }
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        let rest = String::from_utf8_lossy(&rest).to_string();
        let json_text = if chunked {
            let mut out = String::new();
            let mut r = rest.as_str();
            while let Some((len, tail)) = r.split_once("\r\n") {
                let n = usize::from_str_radix(len.trim(), 16).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                out.push_str(&tail[..n]);
                r = &tail[n + 2..];
            }
            out
        } else {
            rest
        };
        let v: Value = serde_json::from_str(&json_text).map_err(|e| format!("{e}: {json_text}"))?;
        if status >= 400 {
            return Err(format!("{status}: {}", v["value"]["message"]));
        }
        Ok(v.get("value").cloned().unwrap_or(v))
    }

    fn sess(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub(crate) fn post(&self, rest: &str, body: Value) -> Result<Value, String> {
        self.call("POST", &self.sess(rest), Some(body))
    }

    /// Add a CTAP2 platform authenticator with user verification (a PIN or
    /// biometric that always succeeds unless told otherwise).
    pub(crate) fn add_authenticator(&mut self) {
        let v = self
            .post(
                "/webauthn/authenticator",
                json!({ "protocol": "ctap2", "transport": "internal", "hasResidentKey": true,
                        "hasUserVerification": true, "isUserConsenting": true, "isUserVerified": true }),
            )
            .expect("the virtual authenticator");
        self.authenticator = v.as_str().map(str::to_owned);
    }

    /// The credentials the virtual authenticator holds.
    pub(crate) fn credentials(&self) -> Vec<Value> {
        let id = self.authenticator.as_deref().expect("an authenticator");
        let v = self.call("GET", &self.sess(&format!("/webauthn/authenticator/{id}/credentials")), None).unwrap();
        v.as_array().cloned().unwrap_or_default()
    }

    pub(crate) fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    pub(crate) fn url(&self) -> String {
        self.call("GET", &self.sess("/url"), None).unwrap().as_str().unwrap_or_default().to_owned()
    }

    pub(crate) fn source(&self) -> String {
        self.call("GET", &self.sess("/source"), None).unwrap().as_str().unwrap_or_default().to_owned()
    }

    pub(crate) fn find(&self, css: &str) -> Option<String> {
        let v = self.post("/element", json!({ "using": "css selector", "value": css })).ok()?;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    pub(crate) fn text(&self, css: &str) -> String {
        match self.find(css) {
            Some(e) => self
                .call("GET", &self.sess(&format!("/element/{e}/text")), None)
                .unwrap()
                .as_str()
                .unwrap_or("")
                .to_owned(),
            None => String::new(),
        }
    }

    pub(crate) fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).unwrap_or_else(|| panic!("no {css} on {}", self.url()));
        self.post(&format!("/element/{e}/value"), json!({ "text": text })).unwrap();
    }

    pub(crate) fn click(&self, css: &str) {
        let e = self.find(css).unwrap_or_else(|| panic!("no {css} on {}", self.url()));
        self.post(&format!("/element/{e}/click"), json!({})).unwrap();
    }

    /// Wait until `css`'s text satisfies `ok` (or panic with what it says).
    pub(crate) fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.text(css);
            if ok(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "waited for {css} on {}; it says `{t}`", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the page source satisfies `ok`.
    pub(crate) fn wait_source(&self, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.source();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "waited on {}; the page is {s}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page.
    pub(crate) fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.call("GET", &self.sess("/screenshot"), None).unwrap();
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()
    }

    /// Run a script in the page (for keyboard events and checks).
    pub(crate) fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] })).unwrap()
    }
}
