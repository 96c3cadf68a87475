// Databases: the list, create (dimension, index type, metric, index parameters), delete (after
// a confirmation) and the grants of one database (its owner or an admin).

import { api, dbPath, enc, isAdmin, session } from "./api.js";
import { $, button, confirmAction, el, fill, fmtTime, say, sayError } from "./dom.js";
import { loadDatabases, onDatabases, setCurrent } from "./state.js";

let grantsDb = null;
let userNames = new Map(); // user_id -> username (when this user may list users)

function indexText(d) {
  const i = d.index || {};
  let s = i.type || d.indexType;
  if (i.servedBy && i.servedBy !== String(i.type).toLowerCase()) s += " → " + i.servedBy;
  if (i.parameters) {
    s += " (" + Object.entries(i.parameters).map(([k, v]) => k + " " + v).join(", ") + ")";
  }
  return s;
}

function render(dbs) {
  $("#dbs-empty").hidden = dbs.length > 0;
  fill("#dbs", dbs, [
    (d) => el("b", {}, d.name),
    (d) => el("code", {}, d.databaseId),
    (d) => d.vectorDimension,
    (d) => d.stats.vectorCount,
    indexText,
    (d) => d.metric,
    (d) => fmtTime(d.created_at),
    (d) => el("span", { class: "actions" },
      button("Vectors", () => { setCurrent(d.databaseId); location.hash = "#vectors"; }, "small secondary"),
      button("Search", () => { setCurrent(d.databaseId); location.hash = "#search"; }, "small secondary"),
      button("Grants", () => openGrants(d), "small secondary"),
      button("Delete", () => remove(d), "small danger", { "data-db": d.databaseId })),
  ]);
}

async function remove(d) {
  const ok = await confirmAction("Delete database " + d.name + "?",
    "Database " + d.databaseId + " and its " + d.stats.vectorCount
    + " vectors will be deleted. This cannot be undone (a snapshot taken before can restore it).",
    "Delete database");
  if (!ok) return;
  try {
    await api("DELETE", dbPath(d.databaseId));
    say("#dbs-msg", "Deleted database " + d.name + " (" + d.databaseId + ").", "ok");
    if (grantsDb && grantsDb.databaseId === d.databaseId) closeGrants();
    await loadDatabases();
  } catch (e) { sayError("#dbs-msg", e); }
}

async function create(ev) {
  ev.preventDefault();
  say("#db-form-msg", "");
  const body = {
    name: $("#db-name").value.trim(),
    vectorDimension: Number($("#db-dim").value),
    indexType: $("#db-index").value,
    metric: $("#db-metric").value,
  };
  const desc = $("#db-desc").value.trim();
  if (desc) body.description = desc;
  if (body.indexType !== "FLAT") {
    const params = {};
    for (const [id, key] of [["#db-m", "M"], ["#db-efc", "efConstruction"], ["#db-efs", "efSearch"]]) {
      const v = $(id).value.trim();
      if (v !== "") params[key] = Number(v);
    }
    if (Object.keys(params).length) body.indexParameters = params;
  }
  try {
    const r = await api("POST", "/v1/databases", body);
    say("#db-form-msg", "Created database " + body.name + " (" + r.databaseId + ").", "ok");
    $("#db-form").reset();
    toggleParams();
    setCurrent(r.databaseId);
    await loadDatabases();
  } catch (e) { sayError("#db-form-msg", e); }
}

function toggleParams() {
  const flat = $("#db-index").value === "FLAT";
  for (const p of document.querySelectorAll("#db-form .param")) p.hidden = flat;
}

async function loadUserNames() {
  try {
    const r = await api("GET", "/v1/users");
    userNames = new Map(r.users.map((u) => [u.user_id, u.username]));
    $("#user-names").replaceChildren(...r.users.map((u) => el("option", { value: u.username })));
  } catch (e) { /* not allowed to list users: grants take a user id then */ }
}

async function openGrants(d) {
  grantsDb = d;
  $("#grants-card").hidden = false;
  $("#grants-db").textContent = d.name + " (" + d.databaseId + ")";
  say("#grants-msg", "");
  await loadUserNames();
  await loadGrants();
  $("#grants-card").scrollIntoView({ block: "nearest" });
}

function closeGrants() {
  grantsDb = null;
  $("#grants-card").hidden = true;
}

async function loadGrants() {
  if (!grantsDb) return;
  try {
    const r = await api("GET", dbPath(grantsDb.databaseId, "/grants"));
    const owner = r.owner || "";
    $("#grants-owner").textContent = (userNames.get(owner) || "") + " " + owner;
    fill("#grants", r.grants, [
      (g) => userNames.get(g.user_id) || "",
      (g) => el("code", {}, g.user_id),
      (g) => g.permission,
      (g) => button("Revoke", () => revokeGrant(g), "small danger"),
    ]);
    if (!r.grants.length) {
      $("#grants tbody").append(el("tr", {}, el("td", { colspan: 4, class: "muted" },
        "No grant: only the owner" + (isAdmin() ? " and admins" : "") + " can reach it.")));
    }
  } catch (e) { sayError("#grants-msg", e); }
}

async function grant(ev) {
  ev.preventDefault();
  const who = $("#grant-user").value.trim();
  let uid = who;
  for (const [id, name] of userNames) if (name === who) uid = id;
  try {
    await api("POST", dbPath(grantsDb.databaseId, "/grants"),
      { user_id: uid, permission: $("#grant-perm").value });
    say("#grants-msg", "Granted " + $("#grant-perm").value + " to " + who + ".", "ok");
    $("#grant-user").value = "";
    await loadGrants();
  } catch (e) { sayError("#grants-msg", e); }
}

async function revokeGrant(g) {
  const name = userNames.get(g.user_id) || g.user_id;
  if (!await confirmAction("Revoke the grant?", name + " will no longer reach "
      + grantsDb.name + ".", "Revoke")) return;
  try {
    await api("DELETE", dbPath(grantsDb.databaseId, "/grants/" + enc(g.user_id)));
    say("#grants-msg", "Revoked the grant of " + name + ".", "ok");
    await loadGrants();
  } catch (e) { sayError("#grants-msg", e); }
}

export function initDatabases() {
  onDatabases(render);
  $("#db-form").addEventListener("submit", create);
  $("#db-index").addEventListener("change", toggleParams);
  $("#grant-form").addEventListener("submit", grant);
  $("#grants-close").addEventListener("click", closeGrants);
}

export async function showDatabases() {
  try { await loadDatabases(); } catch (e) { sayError("#dbs-msg", e); }
  if (session.user && grantsDb) await loadGrants();
}
