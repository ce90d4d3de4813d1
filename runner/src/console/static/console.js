// Edge Runner approval console: the WebAuthn ceremonies and the forms.
// Served from the console's own origin (the Content-Security-Policy allows
// no other script). Text from the server is set with textContent only.
"use strict";

const b64u = {
  encode(buf) {
    const bytes = new Uint8Array(buf);
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  },
  decode(str) {
    const s = str.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(s + "===".slice((s.length + 3) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0)).buffer;
  },
};

function csrf() {
  const m = document.querySelector('meta[name="csrf"]');
  return m ? m.content : "";
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body || {}),
  });
  let data = {};
  try { data = await r.json(); } catch (_) { /* no body */ }
  if (!r.ok) throw new Error(data.error || ("the console answered " + r.status));
  return data;
}

function say(text, ok) {
  const s = document.getElementById("status");
  if (!s) return;
  s.textContent = text;
  s.className = "status " + (ok ? "ok" : "err");
}

// PublicKeyCredentialCreationOptions / RequestOptions: base64url → buffers.
function creationOptions(o) {
  const pk = o.publicKey;
  pk.challenge = b64u.decode(pk.challenge);
  pk.user.id = b64u.decode(pk.user.id);
  (pk.excludeCredentials || []).forEach((c) => { c.id = b64u.decode(c.id); });
  return { publicKey: pk };
}

function requestOptions(o) {
  const pk = o.publicKey;
  pk.challenge = b64u.decode(pk.challenge);
  (pk.allowCredentials || []).forEach((c) => { c.id = b64u.decode(c.id); });
  return { publicKey: pk };
}

function registration(cred) {
  return {
    id: cred.id,
    rawId: b64u.encode(cred.rawId),
    type: cred.type,
    extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
    response: {
      attestationObject: b64u.encode(cred.response.attestationObject),
      clientDataJSON: b64u.encode(cred.response.clientDataJSON),
      transports: cred.response.getTransports ? cred.response.getTransports() : undefined,
    },
  };
}

function assertion(cred) {
  return {
    id: cred.id,
    rawId: b64u.encode(cred.rawId),
    type: cred.type,
    extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
    response: {
      authenticatorData: b64u.encode(cred.response.authenticatorData),
      clientDataJSON: b64u.encode(cred.response.clientDataJSON),
      signature: b64u.encode(cred.response.signature),
      userHandle: cred.response.userHandle ? b64u.encode(cred.response.userHandle) : null,
    },
  };
}

function busy(form, on) {
  form.querySelectorAll("button, input, textarea").forEach((e) => { e.disabled = on; });
}

document.addEventListener("DOMContentLoaded", () => {
  const signin = document.getElementById("signin");
  if (signin) {
    signin.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      busy(signin, true);
      try {
        const principal = document.getElementById("principal").value.trim();
        say("Waiting for your passkey…", true);
        const begin = await post("/api/signin/begin", { principal });
        const cred = await navigator.credentials.get(requestOptions(begin.options));
        await post("/api/signin/finish", { ceremony: begin.ceremony, credential: assertion(cred) });
        say("Signed in.", true);
        window.location.assign("/");
      } catch (e) {
        say("Not signed in: " + e.message, false);
        busy(signin, false);
      }
    });
  }

  const enroll = document.getElementById("enroll");
  if (enroll) {
    const code = document.getElementById("code");
    if (window.location.hash.length > 1) {
      code.value = decodeURIComponent(window.location.hash.slice(1));
      history.replaceState(null, "", window.location.pathname);
    }
    enroll.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      busy(enroll, true);
      try {
        say("Creating your passkey…", true);
        const begin = await post("/api/enroll/begin", { code: code.value.trim() });
        const cred = await navigator.credentials.create(creationOptions(begin.options));
        const done = await post("/api/enroll/finish", { ceremony: begin.ceremony, credential: registration(cred) });
        say("Enrolled: passkey " + done.key + " is registered for " + done.principal + ". You can now sign in.", true);
        const a = document.createElement("a");
        a.href = "/";
        a.textContent = "Sign in";
        document.getElementById("status").append(" ", a);
      } catch (e) {
        say("Not enrolled: " + e.message, false);
        busy(enroll, false);
      }
    });
  }

  const decide = document.getElementById("decide");
  if (decide) {
    let decision = "approve";
    decide.querySelectorAll("button[name=decision]").forEach((b) => {
      b.addEventListener("click", () => { decision = b.value; });
    });
    decide.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (ev.submitter && ev.submitter.value) decision = ev.submitter.value;
      const id = decide.dataset.proposal;
      busy(decide, true);
      try {
        const comment = document.getElementById("comment").value;
        const begin = await post("/api/proposals/" + encodeURIComponent(id) + "/begin", { decision, comment });
        say("Sign to " + decision + " with your passkey: statement " + begin.digest, true);
        const cred = await navigator.credentials.get(requestOptions(begin.options));
        const done = await post("/api/proposals/" + encodeURIComponent(id) + "/finish", { credential: assertion(cred) });
        say(done.message, true);
        setTimeout(() => window.location.reload(), 800);
      } catch (e) {
        say("Nothing was recorded: " + e.message, false);
        busy(decide, false);
      }
    });
  }

  const signout = document.getElementById("signout");
  if (signout) {
    signout.addEventListener("click", async () => {
      try { await post("/api/signout", {}); } catch (_) { /* signed out anyway */ }
      window.location.assign("/");
    });
  }
});
