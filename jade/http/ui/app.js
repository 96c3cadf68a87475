// JadeVectorDB web console: plain JavaScript against the public REST API, no build step.
"use strict";
const $ = (s) => document.querySelector(s);
const state = { token: sessionStorage.getItem("jade_token"), lag: [], timer: null };

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const err = new Error((data && (data.message || data.error)) || r.statusText);
    err.status = r.status;
    throw err;
  }
  return data;
}

function cell(tr, text) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
function fill(sel, rows, cols) {
  const tb = $(sel + " tbody");
  tb.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const c of cols) cell(tr, c(row));
    tb.appendChild(tr);
  }
}

function showApp(on) {
  $("#login-panel").hidden = on;
  $("#app").hidden = !on;
  $("#logout").hidden = !on;
}

async function login(ev) {
  ev.preventDefault();
  $("#login-error").textContent = "";
  const body = { username: $("#username").value, password: $("#password").value };
  if ($("#totp").value) body.totp_code = $("#totp").value;
  try {
    const r = await api("POST", "/v1/auth/login", body);
    state.token = r.token;
    sessionStorage.setItem("jade_token", r.token);
    $("#who").textContent = r.username;
    start();
  } catch (e) {
    $("#login-error").textContent = e.message;
  }
}

async function logout() {
  try { await api("POST", "/v1/auth/logout"); } catch (e) { /* token may be dead already */ }
  state.token = null;
  sessionStorage.removeItem("jade_token");
  clearInterval(state.timer);
  showApp(false);
}

async function loadStatus() {
  const s = await api("GET", "/status");
  $("#mode").textContent = s.mode;
  $("#role").textContent = s.role;
  $("#lsn").textContent = s.log ? s.log.last_lsn : "–";
  $("#epoch").textContent = s.log ? s.log.epoch : "–";
}

async function loadDatabases() {
  const r = await api("GET", "/v1/databases");
  fill("#dbs", r.databases, [
    (d) => d.name, (d) => d.databaseId, (d) => d.vectorDimension, (d) => d.stats.vectorCount,
    (d) => d.index.type + (d.index.servedBy && d.index.servedBy !== d.index.type.toLowerCase()
      ? " (served by " + d.index.servedBy + ")" : ""),
    (d) => d.metric,
  ]);
  const sel = $("#search-db");
  const keep = sel.value;
  sel.replaceChildren();
  for (const d of r.databases) {
    const o = document.createElement("option");
    o.value = d.databaseId;
    o.textContent = d.name + " (" + d.vectorDimension + "-d)";
    sel.appendChild(o);
  }
  if (keep) sel.value = keep;
}

async function pickVector() {
  $("#search-error").textContent = "";
  try {
    const v = await api("GET", "/v1/databases/" + encodeURIComponent($("#search-db").value)
      + "/vectors/" + encodeURIComponent($("#pick-id").value));
    $("#query").value = JSON.stringify(v.values);
  } catch (e) {
    $("#search-error").textContent = e.message;
  }
}

async function search(ev) {
  ev.preventDefault();
  $("#search-error").textContent = "";
  let body;
  try {
    body = { queryVector: JSON.parse($("#query").value), topK: Number($("#topk").value),
             includeMetadata: true };
    if ($("#filters").value.trim()) body.filters = JSON.parse($("#filters").value);
  } catch (e) {
    $("#search-error").textContent = "not valid JSON: " + e.message;
    return;
  }
  try {
    const r = await api("POST", "/v1/databases/" + encodeURIComponent($("#search-db").value)
      + "/search/advanced", body);
    let i = 0;
    fill("#results", r.results, [() => ++i, (x) => x.vectorId, (x) => x.score.toFixed(4),
      (x) => JSON.stringify((x.vector && x.vector.metadata) || {})]);
  } catch (e) {
    $("#search-error").textContent = e.message;
  }
}

function drawLag() {
  const c = $("#lag-chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const pts = state.lag;
  const max = Math.max(1, ...pts);
  g.strokeStyle = "#0f6b4f";
  g.beginPath();
  pts.forEach((v, i) => {
    const x = (i / Math.max(1, pts.length - 1)) * (c.width - 10) + 5;
    const y = c.height - 5 - (v / max) * (c.height - 20);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#1d2b24";
  g.fillText("max lag " + max + " records", 8, 12);
}

async function loadReplication() {
  const r = await api("GET", "/v1/replication/status");
  let lag = 0;
  if (r.role === "primary") {
    fill("#replicas", r.replicas, [(x) => x.replica_id, (x) => x.applied_lsn,
      (x) => x.lag_records, (x) => (x.connected ? "yes" : "no")]);
    lag = Math.max(0, ...r.replicas.map((x) => x.lag_records));
    $("#repl-summary").textContent = "primary at LSN " + r.last_lsn + ", "
      + r.replicas.length + " replica(s)";
  } else {
    fill("#replicas", [r], [(x) => x.replica_id, (x) => x.applied_lsn, (x) => x.lag_records,
      (x) => x.state]);
    lag = r.lag_records;
    $("#repl-summary").textContent = "replica of " + r.primary + " (" + r.state + "), lag "
      + r.lag_records + " records / " + r.lag_seconds + " s";
  }
  state.lag.push(lag);
  if (state.lag.length > 60) state.lag.shift();
  drawLag();
}

async function loadBackups() {
  try {
    const [snaps, w] = await Promise.all([api("GET", "/v1/admin/snapshots"),
                                          api("GET", "/v1/admin/backup/window")]);
    fill("#snapshots", snaps.snapshots, [(s) => s.name, (s) => s.lsn, (s) => s.size_bytes,
      (s) => (s.signed ? "yes" : "no")]);
    $("#window").textContent = w.snapshots
      ? "restorable from LSN " + w.earliest_lsn + " (" + w.earliest_time + ") to LSN "
        + w.latest_lsn + " (" + w.latest_time + ")"
      : "no snapshot yet: nothing is restorable";
    $("#backup-error").textContent = "";
  } catch (e) {
    $("#backup-error").textContent = e.status === 403 ? "backups are visible to admins" : e.message;
  }
}

async function loadAudit() {
  const r = await api("GET", "/v1/security/audit-log?limit=20");
  fill("#audit", r.events, [(e) => e.timestamp, (e) => e.event_type, (e) => e.user_id,
    (e) => e.operation, (e) => (e.success ? "yes" : "no")]);
}

async function refresh() {
  try {
    await Promise.all([loadStatus(), loadDatabases(), loadReplication(), loadBackups(),
                       loadAudit()]);
  } catch (e) {
    if (e.status === 401) logout();
  }
}

function start() {
  showApp(true);
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, 2000);
}

$("#login-form").addEventListener("submit", login);
$("#search-form").addEventListener("submit", search);
$("#pick-btn").addEventListener("click", pickVector);
$("#logout").addEventListener("click", logout);
if (state.token) start(); else showApp(false);
