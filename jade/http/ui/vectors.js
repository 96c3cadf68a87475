// Vectors of one database: browse (limit/offset pages), view one, delete one, and add vectors
// (pasted JSON, a JSON-lines or .npy file) in batches with a progress bar and a report of the
// rows the server or the checks here refused.

import { api, dbPath, enc } from "./api.js";
import { $, $$, button, confirmAction, el, fill, previewValues, say, sayError, short } from "./dom.js";
import { currentDb, loadDatabases, setCurrent, state } from "./state.js";
import { autoBatch, rowsFromNpy, rowsFromText, sendRows } from "./upload.js";

let offset = 0;
let total = 0;
let shown = null; // the vector in the detail panel
let running = null; // the AbortController of an upload in progress
let pageDb = null; // the database the page shows

const limit = () => Number($("#vec-limit").value);

export async function loadPage() {
  const db = currentDb();
  if (!db) {
    fill("#vectors", [], []);
    $("#vec-range").textContent = "no database: create one first";
    $("#vec-prev").disabled = true;
    $("#vec-next").disabled = true;
    return;
  }
  if (db.databaseId !== pageDb) { // another database: its first page
    pageDb = db.databaseId;
    offset = 0;
    $("#vec-detail").hidden = true;
  }
  try {
    const r = await api("GET", dbPath(db.databaseId, "/vectors?limit=" + limit() + "&offset=" + offset));
    total = r.total;
    if (offset > 0 && offset >= total) { // the page emptied (deletes): step back
      offset = Math.max(0, Math.floor((total - 1) / limit()) * limit());
      return loadPage();
    }
    fill("#vectors", r.vectors, [
      (v) => el("code", {}, v.id),
      (v) => el("span", { class: "mono" }, previewValues(v.values)),
      (v) => el("span", { class: "mono" }, v.metadata ? short(v.metadata, 60) : "–"),
      (v) => el("span", { class: "actions" },
        button("View", () => showVector(v), "small secondary"),
        button("Delete", () => removeVector(v.id), "small danger")),
    ]);
    $("#vec-range").textContent = total
      ? "vectors " + (offset + 1) + "–" + (offset + r.vectors.length) + " of " + total
      : "no vector yet: add some below";
    $("#vec-prev").disabled = offset === 0;
    $("#vec-next").disabled = offset + limit() >= total;
  } catch (e) { sayError("#vec-msg", e); }
}

function showVector(v) {
  shown = v;
  $("#vec-detail").hidden = false;
  $("#detail-id").textContent = v.id;
  $("#detail-dim").textContent = String(v.values.length);
  $("#detail-meta").textContent = v.metadata === undefined || v.metadata === null
    ? "–" : JSON.stringify(v.metadata, null, 2);
  $("#detail-values").textContent = JSON.stringify(v.values);
  $("#vec-detail").scrollIntoView({ block: "nearest" });
}

async function getById() {
  const id = $("#vec-id").value.trim();
  const db = currentDb();
  if (!id || !db) return;
  try {
    showVector(await api("GET", dbPath(db.databaseId, "/vectors/" + enc(id))));
    say("#vec-msg", "");
  } catch (e) {
    sayError("#vec-msg", e.status === 404 ? new Error("No vector " + id + " in " + db.name + ".") : e);
  }
}

async function removeVector(id) {
  const db = currentDb();
  if (!await confirmAction("Delete vector " + id + "?", "It is removed from " + db.name + ".",
                           "Delete vector")) return;
  try {
    await api("DELETE", dbPath(db.databaseId, "/vectors/" + enc(id)));
    say("#vec-msg", "Deleted vector " + id + ".", "ok");
    if (shown && shown.id === id) { shown = null; $("#vec-detail").hidden = true; }
    await loadPage();
    loadDatabases().catch(() => {});
  } catch (e) { sayError("#vec-msg", e); }
}

function useAsQuery() {
  if (!shown) return;
  $("#query").value = JSON.stringify(shown.values);
  $("#pick-id").value = shown.id;
  location.hash = "#search";
}

// -- adding ------------------------------------------------------------------------------------

function subtab(name) {
  for (const b of $$(".subtab")) b.classList.toggle("active", b.dataset.sub === name);
  $("#add-paste").hidden = name !== "paste";
  $("#add-file").hidden = name !== "file";
}

function progress(p, started) {
  $("#progress-box").hidden = false;
  $("#progress").max = Math.max(1, p.total);
  $("#progress").value = p.done;
  const secs = (performance.now() - started) / 1000;
  $("#progress-text").textContent = p.done + " of " + p.total + " rows: " + p.stored + " stored, "
    + p.rejected + " rejected" + (secs > 0.5 ? " · " + Math.round(p.stored / secs) + " rows/s" : "")
    + (p.waiting ? " · " + p.waiting : "");
}

function showRejects(rejected) {
  $("#rejects").hidden = rejected.length === 0;
  const cut = rejected.slice(0, 200);
  fill("#reject-table", cut, [(r) => r.row, (r) => r.id || "–", (r) => r.reason]);
  if (rejected.length > cut.length) {
    $("#reject-table tbody").append(el("tr", {}, el("td", { colspan: 3, class: "muted" },
      "… and " + (rejected.length - cut.length) + " more")));
  }
}

async function run(what, makeRows) {
  const db = currentDb();
  if (running) { say("#add-msg", "An upload is running: wait or cancel it.", "error"); return; }
  say("#add-msg", "");
  showRejects([]);
  $("#progress-box").hidden = true;
  if (!db) { say("#add-msg", "Create a database first.", "error"); return; }
  let rows;
  try { rows = await makeRows(db); } catch (e) { say("#add-msg", what + ": " + e.message, "error"); return; }
  if (!rows.length) { say("#add-msg", "Nothing to add: no rows found.", "error"); return; }
  const asked = Number($("#batch-size").value);
  const batchRows = asked > 0 ? asked : autoBatch(db.vectorDimension);
  running = new AbortController();
  $("#upload-cancel").hidden = false;
  for (const b of [$("#upload-btn"), $("#paste-btn")]) b.disabled = true;
  const started = performance.now();
  const res = await sendRows(db.databaseId, rows, {
    batchRows, signal: running.signal, onProgress: (p) => progress(p, started) });
  running = null;
  $("#upload-cancel").hidden = true;
  for (const b of [$("#upload-btn"), $("#paste-btn")]) b.disabled = false;
  showRejects(res.rejected);
  const summary = what + ": " + res.stored + " of " + rows.length + " rows stored in " + db.name
    + (res.rejected.length ? ", " + res.rejected.length + " rejected (listed below)" : "") + ".";
  if (res.error) {
    const why = res.error.name === "AbortError" ? "cancelled" : "stopped: " + res.error.message;
    say("#add-msg", summary + " Upload " + why, "error");
  } else {
    say("#add-msg", summary, res.rejected.length ? "warn" : "ok");
  }
  await loadDatabases().catch(() => {});
  await loadPage();
}

function prefixFor(file) {
  const p = $("#id-prefix").value;
  if (p) return p;
  return file ? file.name.replace(/\.[^.]*$/, "") + "-" : "row-";
}

function addPasted() {
  return run("Pasted", async (db) => rowsFromText($("#paste").value, db.vectorDimension, prefixFor(null)));
}

function upload() {
  const file = $("#file").files[0];
  if (!file) { say("#add-msg", "Choose a .jsonl or .npy file first.", "error"); return null; }
  return run(file.name, async (db) => {
    if (/\.npy$/i.test(file.name)) {
      const r = rowsFromNpy(await file.arrayBuffer(), db.vectorDimension, prefixFor(file));
      return r.rows;
    }
    return rowsFromText(await file.text(), db.vectorDimension, prefixFor(file));
  });
}

export function initVectors() {
  $("#vec-db").addEventListener("change", (ev) => {
    setCurrent(ev.target.value);
    say("#vec-msg", "");
    loadPage();
  });
  $("#vec-prev").addEventListener("click", () => {
    say("#vec-msg", "");
    offset = Math.max(0, offset - limit());
    loadPage();
  });
  $("#vec-next").addEventListener("click", () => { say("#vec-msg", ""); offset += limit(); loadPage(); });
  $("#vec-limit").addEventListener("change", () => { say("#vec-msg", ""); offset = 0; loadPage(); });
  $("#vec-get").addEventListener("click", getById);
  $("#vec-id").addEventListener("keydown", (ev) => { if (ev.key === "Enter") getById(); });
  $("#detail-close").addEventListener("click", () => { $("#vec-detail").hidden = true; });
  $("#detail-delete").addEventListener("click", () => shown && removeVector(shown.id));
  $("#detail-query").addEventListener("click", useAsQuery);
  for (const b of $$(".subtab")) b.addEventListener("click", () => subtab(b.dataset.sub));
  $("#paste-btn").addEventListener("click", addPasted);
  $("#upload-btn").addEventListener("click", upload);
  $("#upload-cancel").addEventListener("click", () => running && running.abort());
}

export async function showVectors() {
  if (!state.databases.length) await loadDatabases().catch((e) => sayError("#vec-msg", e));
  await loadPage();
}
