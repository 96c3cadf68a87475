// Status: the server's figures, the read-only switch (admin), live charts sampled from
// /metrics (request rate, latency percentiles from the histogram's buckets between two
// samples, resident memory) and /status (index lag, replica lag), replication and audit.

import { api, isAdmin } from "./api.js";
import { Chart } from "./charts.js";
import { $, el, fill, fmtBytes, fmtTime, say, sayError } from "./dom.js";

const P = "jadevectordb_";
let prev = null; // the previous /metrics sample: {t, requests, buckets: [[le, count]]}
let last = null; // the last /status
const charts = {};
const listeners = []; // called with each /status
let names = new Map(); // user_id -> username, for the audit table (admins may list users)

export function onStatus(f) { listeners.push(f); }

const num = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(2));
const ms = (x) => num(x) + " ms";
const perSec = (x) => num(x) + "/s";
const mib = (x) => fmtBytes(x);
const mibAxis = (x) => (x / 1048576).toFixed(0) + " MiB";
const axisNum = (x) => (x >= 1000 ? (x / 1000).toFixed(x >= 10000 ? 0 : 1) + "k" : Number.isInteger(x) ? String(x) : x.toFixed(x < 1 ? 2 : 1));
const records = (x) => (Number.isInteger(x) ? String(x) : x.toFixed(1));

// Prometheus text format: the samples this page needs
export function parseMetrics(text) {
  let requests = 0;
  const buckets = [];
  let rss = null;
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const sp = line.lastIndexOf(" ");
    const name = line.slice(0, sp);
    const value = Number(line.slice(sp + 1));
    if (name.startsWith(P + "http_requests_total")) requests += value;
    else if (name.startsWith(P + "http_request_duration_seconds_bucket")) {
      const le = /le="([^"]+)"/.exec(name);
      if (le) buckets.push([le[1] === "+Inf" ? Infinity : Number(le[1]), value]);
    } else if (name === "process_resident_memory_bytes") rss = value;
  }
  buckets.sort((a, b) => a[0] - b[0]);
  return { requests, buckets, rss };
}

// the q-quantile (seconds) of the requests between two cumulative histograms, interpolated
// linearly inside its bucket (as Prometheus' histogram_quantile); null with no request
export function quantile(q, before, after) {
  const d = after.map(([le, c], i) => [le, c - (before[i] ? before[i][1] : 0)]);
  const n = d.length ? d[d.length - 1][1] : 0;
  if (n <= 0) return null;
  const rank = q * n;
  let lo = 0;
  let below = 0;
  for (const [le, c] of d) {
    if (c >= rank) {
      if (le === Infinity) return lo; // beyond the last bound: its lower edge
      return lo + (le - lo) * ((rank - below) / Math.max(1e-12, c - below));
    }
    lo = le;
    below = c;
  }
  return lo;
}

function figure(label, value, hint) {
  return el("div", { class: "figure" }, el("span", { class: "label" }, label),
    el("b", {}, value), hint ? el("span", { class: "hint" }, hint) : null);
}

function renderFigures(s, rss) {
  const p = s.performance || {};
  const sys = s.system || {};
  const lag = (s.indexes && s.indexes.lag) || {};
  const storage = s.storage || {};
  $("#figures").replaceChildren(
    figure("version", s.version, "up " + s.uptime),
    figure("mode", s.mode, "role " + s.role),
    figure("log", "LSN " + s.log.last_lsn, "from " + s.log.first_lsn + ", epoch " + s.log.epoch),
    figure("databases", String(p.database_count), p.total_vectors + " vectors"),
    figure("memory", rss === null ? "–" : fmtBytes(rss), "host " + sys.memory_usage_percent + "% used"),
    figure("CPU", sys.cpu_usage_percent + "%", "disk " + sys.disk_usage_percent + "% used"),
    figure("index lag", lag.records + " records", lag.vectors + " vectors, " + lag.seconds + " s"),
    figure("disk free", fmtBytes(storage.free_bytes),
      storage.writes_refused ? "writes refused: " + storage.reason : "above the reserve"),
  );
  const admin = isAdmin();
  $("#mode-text").textContent = s.mode === "readonly" ? "refused (read-only)"
    : s.mode === "replica" ? "refused (replica)" : "accepted";
  const btn = $("#readonly-btn");
  btn.hidden = !admin || s.role === "replica";
  btn.textContent = s.mode === "readonly" ? "Accept writes again" : "Switch to read-only";
  btn.dataset.mode = s.mode;
}

function renderReplication(s) {
  const r = s.replication || {};
  if (s.role === "replica") {
    $("#replicas").hidden = false;
    fill("#replicas", [r], [() => "this node", (x) => x.applied_lsn, (x) => x.lag_records,
      (x) => x.state]);
    $("#repl-summary").textContent = "Replica of " + r.primary + " (" + r.state + "), "
      + r.lag_records + " records / " + r.lag_seconds + " s behind.";
    return;
  }
  const reps = r.replicas || [];
  $("#replicas").hidden = reps.length === 0;
  fill("#replicas", reps, [(x) => x.replica_id, (x) => x.applied_lsn, (x) => x.lag_records,
    () => "following"]);
  $("#repl-summary").textContent = reps.length
    ? "Primary at LSN " + s.log.last_lsn + " with " + reps.length + " replica"
      + (reps.length === 1 ? "" : "s") + "."
    : "Primary at LSN " + s.log.last_lsn + ": no replicas.";
}

async function loadAudit() {
  const r = await api("GET", "/v1/security/audit-log?limit=15");
  fill("#audit", r.events, [(e) => fmtTime(e.timestamp), (e) => e.event_type,
    (e) => names.get(e.user_id) || e.user_id || "–", (e) => e.operation, (e) => (e.success ? "yes" : "no")]);
  if (!r.events.length) {
    $("#audit tbody").append(el("tr", {}, el("td", { colspan: 5, class: "muted" },
      "No events recorded on this node yet.")));
  }
}

function initCharts() {
  if (charts.rate) return;
  charts.rate = new Chart($("#chart-rate"), "Requests", perSec, { axis: (x) => axisNum(x) + "/s" });
  charts.latency = new Chart($("#chart-latency"), "Latency", ms, { axis: (x) => axisNum(x) + " ms" });
  charts.memory = new Chart($("#chart-memory"), "Memory (resident)", mib, { axis: mibAxis });
  charts.index = new Chart($("#chart-index"), "Index lag", records, { axis: axisNum });
  charts.replicas = new Chart($("#chart-replicas"), "Replica lag (records)", records, { axis: axisNum });
}

// one sample of everything; called by the page's timer whatever view is shown, so the charts
// have a history when the view opens
export async function sample(visible) {
  initCharts();
  const [s, text] = await Promise.all([
    api("GET", "/status"),
    api("GET", "/metrics", undefined, { as: "text" }).catch(() => null), // charts say so
  ]);
  last = s;
  for (const f of listeners) f(s);
  const m = parseMetrics(text || "");
  const t = performance.now() / 1000;
  for (const name of ["rate", "latency", "memory"]) {
    charts[name].setEmpty(text === null ? "/metrics did not answer" : null);
  }
  if (text === null) {
    prev = null;
  } else if (prev) {
    const dt = Math.max(0.001, t - prev.t);
    charts.rate.push({ "": Math.max(0, (m.requests - prev.requests) / dt) });
    const q = (x) => { const v = quantile(x, prev.buckets, m.buckets); return v === null ? null : v * 1000; };
    charts.latency.push({ p50: q(0.5), p95: q(0.95), p99: q(0.99) });
  }
  if (text !== null) prev = { t, requests: m.requests, buckets: m.buckets };
  if (m.rss !== null) charts.memory.push({ "": m.rss });
  const lag = (s.indexes && s.indexes.lag) || {};
  charts.index.push({ records: lag.records || 0, vectors: lag.vectors || 0 });
  const r = s.replication || {};
  if (s.role === "replica") {
    charts.replicas.setEmpty(null);
    charts.replicas.push({ "this replica": r.lag_records || 0 });
  } else {
    const reps = r.replicas || [];
    charts.replicas.setEmpty(reps.length ? null : "no replicas");
    const point = {};
    for (const x of reps) point[x.replica_id] = x.lag_records;
    charts.replicas.push(point);
  }
  if (visible) {
    for (const c of Object.values(charts)) c.draw();
    renderFigures(s, m.rss);
    renderReplication(s);
    await loadAudit();
  }
  return s;
}

async function toggleReadonly() {
  const ro = $("#readonly-btn").dataset.mode === "readonly";
  try {
    const r = await api("POST", ro ? "/v1/admin/readwrite" : "/v1/admin/readonly");
    say("#status-msg", r.mode === "readonly"
      ? "Read-only: writes are refused (503 read_only) until you accept them again."
      : "Writes are accepted again.", "ok");
    await sample(true);
  } catch (e) { sayError("#status-msg", e); }
}

export function lastStatus() { return last; }

export function initStatus() {
  $("#readonly-btn").addEventListener("click", toggleReadonly);
}

export async function showStatus() {
  if (isAdmin()) {
    try {
      const r = await api("GET", "/v1/users");
      names = new Map(r.users.map((u) => [u.user_id, u.username]));
    } catch (e) { /* ids then */ }
  }
  try { await sample(true); } catch (e) { sayError("#status-msg", e); }
}
