// JadeVectorDB web console: plain JavaScript modules against the public REST API, no build
// step. This module signs in and out (with the temporary-password and two-factor states the
// API answers), switches views (#databases, #vectors, ...) and runs the 2-second poll.

import { api, isAdmin, saveSession, session } from "./api.js";
import { initDatabases, showDatabases } from "./databases.js";
import { $, $$, say } from "./dom.js";
import { initSearch, showSearch } from "./search.js";
import { initSnapshots, loadSnapshots } from "./snapshots.js";
import { initStatus, onStatus, sample, showStatus } from "./status.js";
import { initUsers, showUsers } from "./users.js";
import { initVectors, showVectors } from "./vectors.js";

const VIEWS = {
  databases: showDatabases,
  vectors: showVectors,
  search: showSearch,
  snapshots: loadSnapshots,
  users: showUsers,
  status: showStatus,
};
let view = null;
let timer = null;

function banner(text) {
  $("#banner").textContent = text || "";
  $("#banner").hidden = !text;
}

// which panel: "login", "change" (temporary password), "enrol" (TOTP) or "app"
function panel(name) {
  $("#login-panel").hidden = name !== "login";
  $("#change-panel").hidden = name !== "change";
  $("#enrol-panel").hidden = name !== "enrol";
  $("#app").hidden = name !== "app";
  $("#logout").hidden = name === "login";
  for (const e of $$("#statusbar .live")) e.hidden = name !== "app";
  $("#who").textContent = session.user && name !== "login"
    ? session.user.username + (isAdmin() ? " (admin)" : "") : "";
  for (const e of $$(".admin-only")) e.hidden = !isAdmin();
}

async function login(ev) {
  ev.preventDefault();
  say("#login-error", "", "error");
  banner("");
  $("#totp-label").classList.remove("wanted");
  const body = { username: $("#username").value, password: $("#password").value };
  if ($("#totp").value) body.totp_code = $("#totp").value.trim();
  try {
    const r = await api("POST", "/v1/auth/login", body, { anonymous: true });
    saveSession(r.token, { user_id: r.user_id, username: r.username || body.username,
                           roles: r.roles || [] });
    $("#password").value = "";
    $("#totp").value = "";
    if (r.totp_enrollment_required) { panel("enrol"); return; }
    if (r.must_change_password) { panel("change"); $("#change-old").focus(); return; }
    start();
  } catch (e) {
    if (e.code === "totp_required") {
      $("#totp-label").classList.add("wanted");
      say("#login-error", "This account has two-factor authentication: type the code from your "
        + "authenticator app and sign in again.", "error");
      $("#totp").focus();
    } else if (e.code === "not_primary") {
      const primary = e.body && e.body.primary;
      say("#login-error", "This node is a read replica: it cannot record a sign-in. Sign in on the "
        + "primary" + (primary ? " (" + primary + ")" : "") + ", or use a token or an API key "
        + "below.", "error");
      $("#key-login").open = true;
    } else {
      say("#login-error", e.message, "error");
    }
  }
}

// who a credential belongs to: a login token says so (its payload is readable: no secret is
// needed to read it, only to make it); an API key is found by its prefix among the keys the
// key itself may list
async function identify(cred) {
  const parts = cred.split(".");
  if (parts.length === 3) {
    try {
      const claims = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
      if (claims.sub) return claims.sub;
    } catch (e) { /* not a token: try it as a key */ }
  }
  const r = await api("GET", "/v1/api-keys", undefined, { token: cred });
  const k = r.api_keys.find((x) => x.key_prefix && cred.startsWith(x.key_prefix));
  if (!k) throw new Error("cannot tell whose key this is");
  return k.user_id;
}

async function keyLogin(ev) {
  ev.preventDefault();
  say("#login-error", "", "error");
  banner("");
  const cred = $("#key-login-value").value.trim();
  try {
    const uid = await identify(cred);
    const me = await api("GET", "/v1/users/" + encodeURIComponent(uid), undefined, { token: cred });
    saveSession(cred, { user_id: me.user_id, username: me.username, roles: me.roles });
    $("#key-login-form").reset();
    $("#key-login").open = false;
    start();
  } catch (e) { say("#login-error", e.message, "error"); }
}

async function logout(message) {
  clearInterval(timer);
  timer = null;
  const token = session.token;
  saveSession(null, null); // first: a poll answered 401 meanwhile is no "session ended"
  panel("login");
  if (token) {
    try { await api("POST", "/v1/auth/logout", undefined, { token }); } catch (e) { /* dead already */ }
  }
  banner(typeof message === "string" ? message : "");
}

// a call answered 401 with our token: the session ended (expired, revoked, password changed)
session.onExpired = (err) => {
  if (!session.token) return;
  saveSession(null, null);
  clearInterval(timer);
  timer = null;
  panel("login");
  banner("Your session has ended (" + err.message + "): sign in again.");
};

async function changeTemporary(ev) {
  ev.preventDefault();
  say("#change-error", "", "error");
  if ($("#change-new").value !== $("#change-new2").value) {
    say("#change-error", "The two new passwords differ.", "error");
    return;
  }
  try {
    const r = await api("PUT", "/v1/users/" + encodeURIComponent(session.user.user_id) + "/password",
      { old_password: $("#change-old").value, new_password: $("#change-new").value });
    saveSession(r.token, session.user);
    $("#change-form").reset();
    start();
    banner("");
    say("#dbs-msg", "Password changed: welcome.", "ok");
  } catch (e) { say("#change-error", e.message, "error"); }
}

async function enrolStart() {
  say("#enrol-error", "", "error");
  try {
    const r = await api("POST", "/v1/auth/2fa/enroll");
    $("#enrol-key").textContent = r.secret;
    $("#enrol-uri").textContent = r.otpauth_uri;
    $("#enrol-secret").hidden = false;
    $("#enrol-form").hidden = false;
    $("#enrol-code").focus();
  } catch (e) { say("#enrol-error", e.message, "error"); }
}

async function enrolConfirm(ev) {
  ev.preventDefault();
  try {
    await api("POST", "/v1/auth/2fa/confirm", { code: $("#enrol-code").value.trim() });
    saveSession(null, null);
    $("#enrol-form").reset();
    $("#enrol-secret").hidden = true;
    $("#enrol-form").hidden = true;
    panel("login");
    $("#totp-label").classList.add("wanted");
    banner("Two-factor authentication is on. Sign in again with the next code from your app.");
  } catch (e) { say("#enrol-error", e.message, "error"); }
}

function route() {
  let name = location.hash.replace(/^#/, "");
  if (!(name in VIEWS) || (name === "snapshots" && !isAdmin())) name = "databases";
  view = name;
  for (const v of $$(".view")) v.hidden = v.id !== "view-" + name;
  for (const a of $$("#tabs a")) a.classList.toggle("active", a.dataset.view === name);
  Promise.resolve(VIEWS[name]()).catch((e) => banner(e.message));
}

function header(s) {
  $("#mode").textContent = s.mode;
  $("#role").textContent = s.role;
  $("#lsn").textContent = s.log ? s.log.last_lsn : "–";
  $("#epoch").textContent = s.log ? s.log.epoch : "–";
  $("#mode").className = s.mode === "readwrite" ? "" : "warn";
}

let pollFailed = false; // the banner says the poll failed: cleared when it works again

async function tick() {
  if (!session.token) return;
  try {
    await sample(view === "status");
    if (pollFailed) { pollFailed = false; banner(""); }
  } catch (e) {
    if (e.status !== 401 && session.token) {
      pollFailed = true;
      banner("Status poll failed: " + e.message);
    }
  }
}

function start() {
  panel("app");
  banner("");
  route();
  tick();
  clearInterval(timer);
  timer = setInterval(tick, 2000);
}

async function resume() {
  // a token kept in this tab's session storage: is it still good?
  try {
    const me = await api("GET", "/v1/users/" + encodeURIComponent(session.user.user_id));
    saveSession(session.token, { user_id: me.user_id, username: me.username, roles: me.roles });
    if (me.must_change_password) { panel("change"); return; }
    start();
  } catch (e) {
    if (e.status === 403 && e.code === "totp_enrollment_required") { panel("enrol"); return; }
    if (e.status === 403 && e.code === "password_change_required") { panel("change"); return; }
    saveSession(null, null);
    panel("login");
  }
}

window.addEventListener("unhandledrejection", (ev) => {
  banner("Unexpected error: " + (ev.reason && ev.reason.message ? ev.reason.message : ev.reason));
});

$("#login-form").addEventListener("submit", login);
$("#key-login-form").addEventListener("submit", keyLogin);
$("#logout").addEventListener("click", () => logout(""));
$("#change-form").addEventListener("submit", changeTemporary);
$("#change-cancel").addEventListener("click", () => logout(""));
$("#enrol-start").addEventListener("click", enrolStart);
$("#enrol-form").addEventListener("submit", enrolConfirm);
$("#enrol-cancel").addEventListener("click", () => logout(""));
// after a change made here, the header's LSN and mode follow at once (not at the next poll)
let headerSoon = null;
window.addEventListener("jade-write", () => {
  clearTimeout(headerSoon);
  headerSoon = setTimeout(() => {
    if (session.token && !$("#app").hidden) api("GET", "/status").then(header).catch(() => {});
  }, 100);
});
window.addEventListener("hashchange", () => { if (session.token && !$("#app").hidden) route(); });
initDatabases();
initVectors();
initSearch();
initSnapshots();
initUsers();
initStatus();
onStatus(header);
if (session.token && session.user) resume(); else panel("login");
