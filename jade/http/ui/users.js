// Users and keys: your account (change password), your API keys (create: shown once; revoke),
// and for administrators every user (create, disable/enable, reset password, delete) and
// every key.

import { api, enc, isAdmin, saveSession, session } from "./api.js";
import { $, $$, ask, button, confirmAction, el, fill, fmtTime, say, sayError } from "./dom.js";

let names = new Map(); // user_id -> username

function showMe() {
  const u = session.user || {};
  $("#me-name").textContent = u.username || "";
  $("#me-id").textContent = u.user_id || "";
  $("#me-roles").textContent = (u.roles || []).join(", ");
}

async function changePassword(ev) {
  ev.preventDefault();
  const u = session.user;
  try {
    const r = await api("PUT", "/v1/users/" + enc(u.user_id) + "/password", {
      old_password: $("#pw-old").value, new_password: $("#pw-new").value,
      keep_api_keys: $("#pw-keep").checked });
    if (r.token) saveSession(r.token, u); // every other session has ended; this one goes on
    $("#pw-form").reset();
    $("#pw-details").open = false;
    say("#me-msg", r.message, "ok");
    await loadKeys();
  } catch (e) { sayError("#me-msg", e); }
}

// -- API keys ------------------------------------------------------------------------------

export async function loadKeys() {
  try {
    const r = await api("GET", "/v1/api-keys" + (isAdmin() ? "" : "?user_id=" + enc(session.user.user_id)));
    const keys = r.api_keys.slice().sort((a, b) => (b.is_active - a.is_active)
      || String(b.created_at).localeCompare(String(a.created_at)));
    fill("#keys", keys, [
      (k) => k.description || "–",
      (k) => el("code", {}, k.key_id),
      (k) => el("code", {}, k.key_prefix || ""),
      (k) => names.get(k.user_id) || k.user_id,
      (k) => (k.permissions && k.permissions.length ? k.permissions.join(", ") : "all"),
      (k) => fmtTime(k.created_at),
      (k) => (k.expires_at ? fmtTime(k.expires_at) : "never"),
      (k) => (k.last_used_at ? fmtTime(k.last_used_at) + " (" + (k.usage_count || 0) + ")" : "never"),
      (k) => (k.is_active ? el("span", { class: "good" }, "active") : el("span", { class: "bad" }, "revoked")),
      (k) => (k.is_active ? button("Revoke", () => revoke(k), "small danger") : ""),
    ]);
    if (!keys.length) {
      $("#keys tbody").append(el("tr", {}, el("td", { colspan: 10, class: "muted" }, "No API key yet.")));
    }
  } catch (e) { sayError("#key-msg", e); }
}

async function createKey(ev) {
  ev.preventDefault();
  const perms = $$("#key-form .scopes input:checked").map((i) => i.value);
  const body = { user_id: session.user.user_id, description: $("#key-desc").value.trim(),
                 validity_days: Number($("#key-days").value || 0) };
  if (perms.length) body.permissions = perms;
  try {
    const r = await api("POST", "/v1/api-keys", body);
    $("#new-key-value").textContent = r.api_key;
    $("#new-key").hidden = false;
    say("#key-msg", "Created key " + r.key_id + ". Use it as: Authorization: Bearer <key>.", "ok");
    $("#key-form").reset();
    await loadKeys();
  } catch (e) { sayError("#key-msg", e); }
}

async function revoke(k) {
  if (!await confirmAction("Revoke API key " + (k.description || k.key_id) + "?",
      "Anything using key " + k.key_id + " is refused from now on.", "Revoke key")) return;
  try {
    await api("DELETE", "/v1/api-keys/" + enc(k.key_id));
    say("#key-msg", "Revoked key " + k.key_id + ".", "ok");
    await loadKeys();
  } catch (e) { sayError("#key-msg", e); }
}

async function copyKey() {
  try {
    await navigator.clipboard.writeText($("#new-key-value").textContent);
    say("#key-msg", "Copied the key to the clipboard.", "ok");
  } catch (e) {
    say("#key-msg", "The browser refused the clipboard: select the key and copy it by hand.", "error");
  }
}

// -- users (admin) -------------------------------------------------------------------------

export async function loadUsers() {
  if (!isAdmin()) return;
  try {
    const r = await api("GET", "/v1/users");
    names = new Map(r.users.map((u) => [u.user_id, u.username]));
    const users = r.users.slice().sort((a, b) => a.username.localeCompare(b.username));
    fill("#users", users, [
      (u) => el("b", {}, u.username),
      (u) => el("code", {}, u.user_id),
      (u) => u.email || "–",
      (u) => u.roles.join(", "),
      (u) => (u.is_active
        ? el("span", { class: "good" }, "active" + (u.must_change_password ? " (temporary password)" : ""))
        : el("span", { class: "bad" }, "disabled")),
      (u) => fmtTime(u.last_login),
      (u) => (u.user_id === session.user.user_id ? el("span", { class: "muted" }, "you")
        : el("span", { class: "actions", "data-user": u.username },
          button(u.is_active ? "Disable" : "Enable", () => setActive(u, !u.is_active), "small secondary"),
          button("Reset password", () => resetPassword(u), "small secondary"),
          button("Delete", () => removeUser(u), "small danger"))),
    ]);
  } catch (e) { sayError("#user-msg", e); }
}

async function createUser(ev) {
  ev.preventDefault();
  const body = { username: $("#user-name").value.trim(), password: $("#user-pass").value,
                 roles: [$("#user-role").value] };
  const email = $("#user-email").value.trim();
  if (email) body.email = email;
  try {
    const r = await api("POST", "/v1/users", body);
    say("#user-msg", "Created user " + r.username + " (" + r.user_id + ").", "ok");
    $("#user-form").reset();
    await loadUsers();
  } catch (e) { sayError("#user-msg", e); }
}

async function setActive(u, active) {
  if (!active && !await confirmAction("Disable " + u.username + "?",
      "Their sessions and API keys stop working until the account is enabled again.", "Disable")) return;
  try {
    await api("PUT", "/v1/users/" + enc(u.user_id), { is_active: active });
    say("#user-msg", (active ? "Enabled " : "Disabled ") + u.username + ".", "ok");
    await loadUsers();
  } catch (e) { sayError("#user-msg", e); }
}

async function resetPassword(u) {
  const v = await ask("Reset the password of " + u.username,
    "They must choose a new password at their next sign-in; their sessions end now.",
    [{ name: "password", label: "Temporary password", type: "password" }], "Reset password");
  if (!v) return;
  try {
    await api("PUT", "/v1/admin/users/" + enc(u.user_id) + "/reset-password", { new_password: v.password });
    say("#user-msg", "Reset the password of " + u.username + ": tell them the temporary one.", "ok");
    await loadUsers();
  } catch (e) { sayError("#user-msg", e); }
}

async function removeUser(u) {
  if (!await confirmAction("Delete user " + u.username + "?",
      "The account, its sessions and API keys are removed. Their databases stay.", "Delete user")) return;
  try {
    await api("DELETE", "/v1/users/" + enc(u.user_id));
    say("#user-msg", "Deleted user " + u.username + ".", "ok");
    await loadUsers();
    await loadKeys();
  } catch (e) { sayError("#user-msg", e); }
}

export function initUsers() {
  $("#pw-form").addEventListener("submit", changePassword);
  $("#key-form").addEventListener("submit", createKey);
  $("#new-key-copy").addEventListener("click", copyKey);
  $("#new-key-done").addEventListener("click", () => {
    $("#new-key").hidden = true;
    $("#new-key-value").textContent = "";
  });
  $("#user-form").addEventListener("submit", createUser);
}

export async function showUsers() {
  showMe();
  await loadUsers();
  await loadKeys();
}
