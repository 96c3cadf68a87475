// Search: a query vector (pasted, or a stored vector's values), metadata filters, topK.

import { api, dbPath, enc } from "./api.js";
import { $, button, el, fill, previewValues, say, short } from "./dom.js";
import { currentDb, loadDatabases, setCurrent, state } from "./state.js";

async function pickVector(id) {
  say("#search-error", "", "error");
  const db = currentDb();
  const vid = id || $("#pick-id").value.trim();
  if (!db || !vid) return;
  try {
    const v = await api("GET", dbPath(db.databaseId, "/vectors/" + enc(vid)));
    $("#pick-id").value = vid;
    $("#query").value = JSON.stringify(v.values);
  } catch (e) {
    say("#search-error", e.status === 404 ? "No vector " + vid + " in " + db.name + "." : e.message, "error");
  }
}

async function search(ev) {
  ev.preventDefault();
  say("#search-error", "", "error");
  const db = currentDb();
  if (!db) { say("#search-error", "Create a database first.", "error"); return; }
  let body;
  try {
    body = { queryVector: JSON.parse($("#query").value), topK: Number($("#topk").value),
             includeMetadata: true, includeValues: $("#include-values").checked };
  } catch (e) {
    say("#search-error", "The query vector is not valid JSON: " + e.message, "error");
    return;
  }
  if (!Array.isArray(body.queryVector)) {
    say("#search-error", "The query vector must be a JSON list of numbers.", "error");
    return;
  }
  if ($("#filters").value.trim()) {
    try { body.filters = JSON.parse($("#filters").value); } catch (e) {
      say("#search-error", "The filters are not valid JSON: " + e.message, "error");
      return;
    }
  }
  const t0 = performance.now();
  try {
    const r = await api("POST", dbPath(db.databaseId, "/search/advanced"), body);
    const ms = performance.now() - t0;
    let i = 0;
    fill("#results", r.results, [
      () => ++i,
      (x) => el("code", {}, x.vectorId),
      (x) => x.score.toFixed(4),
      (x) => el("span", { class: "mono" }, short((x.vector && x.vector.metadata) || {}, 90),
        x.vector && x.vector.values ? el("br") : null,
        x.vector && x.vector.values ? el("span", { class: "muted" }, previewValues(x.vector.values)) : null),
      (x) => button("Use as query", () => pickVector(x.vectorId), "small secondary"),
    ]);
    say("#search-summary", r.results.length + " result" + (r.results.length === 1 ? "" : "s")
      + " from " + db.name + " in " + ms.toFixed(0) + " ms"
      + (body.filters ? " (filtered)" : ""), "info");
  } catch (e) {
    fill("#results", [], []);
    say("#search-summary", "");
    say("#search-error", e.message, "error");
  }
}

export function initSearch() {
  $("#search-form").addEventListener("submit", search);
  $("#pick-btn").addEventListener("click", () => pickVector());
  $("#search-db").addEventListener("change", (ev) => setCurrent(ev.target.value));
}

export async function showSearch() {
  if (!state.databases.length) await loadDatabases().catch((e) => say("#search-error", e.message, "error"));
}
