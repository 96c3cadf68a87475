// Adding vectors in bulk: rows from pasted JSON, a JSON-lines file or a .npy array are checked
// here (id, dimension, finite numbers), then sent in batches to /vectors/batch. A batch is
// all or nothing on the server, so when one is refused the row it names ("vectors[3]: ...")
// is set aside and the rest sent again; a refusal naming no row is split in halves until the
// refused rows are alone. Every rejected row is reported with its row number and the reason.

import { ApiError, api, dbPath } from "./api.js";
import { float32ToB64, parseNpy } from "./npy.js";

// One row: {row: 1-based row or line number, id, item: the API's vector object}, or
// {row, id, reason} when it cannot be sent, or {row, id, make} whose make() returns {item} or
// {reason} when its batch is sent.

function checkItem(obj, row, dim, prefix) {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    return { row, id: "", reason: "not an object with id and values" };
  }
  let id = obj.id;
  if (typeof id === "number") id = String(id);
  if (id === undefined || id === null || id === "") id = prefix + (row - 1);
  if (typeof id !== "string") return { row, id: String(id), reason: "'id' must be a string" };
  const item = { id };
  if (obj.metadata !== undefined) item.metadata = obj.metadata;
  if (typeof obj.valuesB64 === "string" && obj.values === undefined) {
    item.valuesB64 = obj.valuesB64;
    return { row, id, item };
  }
  const v = obj.values;
  if (!Array.isArray(v)) return { row, id, reason: "missing 'values' (a list of numbers)" };
  if (v.length !== dim) {
    return { row, id, reason: "dimension mismatch: " + v.length + " values, the database expects " + dim };
  }
  for (let j = 0; j < v.length; j++) {
    if (typeof v[j] !== "number" || !Number.isFinite(v[j])) {
      return { row, id, reason: "values[" + j + "] is not a finite number: " + JSON.stringify(v[j]) };
    }
  }
  item.values = v;
  return { row, id, item };
}

// Text pasted or read from a .json/.jsonl file: a JSON array, one object, {"vectors": [...]},
// or JSON lines (blank lines skipped; a line that is not JSON is a rejected row).
export function rowsFromText(text, dim, prefix) {
  const trimmed = text.trim();
  if (!trimmed) return [];
  let whole;
  try { whole = JSON.parse(trimmed); } catch (e) { whole = undefined; }
  if (whole !== undefined) {
    let list = whole;
    if (whole && !Array.isArray(whole) && typeof whole === "object") {
      list = Array.isArray(whole.vectors) ? whole.vectors : [whole];
    }
    if (!Array.isArray(list)) return [{ row: 1, id: "", reason: "expected an array of vectors" }];
    return list.map((obj, i) => checkItem(obj, i + 1, dim, prefix));
  }
  const out = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line) continue;
    let obj;
    try { obj = JSON.parse(line); } catch (e) {
      out.push({ row: i + 1, id: "", reason: "not valid JSON: " + e.message });
      continue;
    }
    out.push(checkItem(obj, i + 1, dim, prefix));
  }
  return out;
}

// A .npy file: row n gets the id prefix + n (n from 0)
export function rowsFromNpy(buffer, dim, prefix) {
  const a = parseNpy(buffer);
  if (a.cols !== dim) {
    throw new Error("the array is " + a.rows + " × " + a.cols + " (" + a.dtype + "): its rows have "
      + a.cols + " values, the database expects " + dim);
  }
  const out = new Array(a.rows);
  for (let i = 0; i < a.rows; i++) {
    const id = prefix + i;
    // read when its batch is sent: a large array is never held twice (as base64) at once
    const make = () => {
      const v = a.row(i);
      const bad = v.findIndex((x) => !Number.isFinite(x));
      return bad >= 0
        ? { reason: "value " + bad + " is not a finite float32 (" + v[bad] + ")" }
        : { item: { id, valuesB64: float32ToB64(v) } };
    };
    out[i] = { row: i + 1, id, make };
  }
  return { rows: out, shape: [a.rows, a.cols], dtype: a.dtype };
}

export function autoBatch(dim) {
  return Math.max(1, Math.min(1000, Math.floor(1_000_000 / (dim * 10 + 60))));
}

const ROW_IN_MESSAGE = /vectors\[(\d+)\]/;
// refusals that pass: the search index catching up with writes (back-pressure), a rate limit,
// a server still starting. The batch is sent again after Retry-After, for up to MAX_WAIT s.
const TRANSIENT = new Set(["index_behind", "rate_limit_exceeded", "starting"]);
const MAX_WAIT = 300;

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener("abort", () => {
        clearTimeout(t);
        reject(new DOMException("cancelled", "AbortError"));
      }, { once: true });
    }
  });
}

// rows: as above. Returns {stored, rejected: [{row, id, reason}], error: ApiError|null}.
// onProgress({done, stored, rejected, total, waiting}) after each batch (waiting: why the
// upload pauses, or ""); signal: an AbortSignal.
export async function sendRows(db, rows, { batchRows, onProgress, signal }) {
  const rejected = rows.filter((r) => r.reason).map((r) => ({ row: r.row, id: r.id, reason: r.reason }));
  const good = rows.filter((r) => r.item || r.make);
  const total = rows.length;
  let stored = 0;
  let waited = 0; // seconds spent waiting on transient refusals, in a row
  const report = (waiting = "") => onProgress && onProgress({
    done: stored + rejected.length, stored, rejected: rejected.length, total, waiting });
  report();

  // send one batch; returns the rows it could not store (with reasons) or throws to stop
  async function send(batch) {
    let rest = batch;
    while (rest.length) {
      if (signal && signal.aborted) throw new DOMException("cancelled", "AbortError");
      try {
        const r = await api("POST", dbPath(db, "/vectors/batch"),
          { vectors: rest.map((x) => x.item) }, { signal });
        stored += r && typeof r.count === "number" ? r.count : rest.length;
        waited = 0;
        return;
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        if (TRANSIENT.has(e.code) && waited < MAX_WAIT) {
          const secs = Math.min(10, Math.max(1, e.retryAfter || 1));
          waited += secs;
          report("the server asked to wait (" + e.code + "): retrying in " + secs + " s");
          await sleep(secs * 1000, signal);
          continue;
        }
        if (e.status === 413 && rest.length > 1) { // too big for one request: halves
          const half = Math.ceil(rest.length / 2);
          await send(rest.slice(0, half));
          await send(rest.slice(half));
          return;
        }
        if (e.status !== 400) throw e; // read-only, signed out, server trouble: stop
        const reason = (e.body && e.body.message) || e.message;
        const m = ROW_IN_MESSAGE.exec(reason);
        if (rest.length === 1) {
          rejected.push({ row: rest[0].row, id: rest[0].id, reason: reason.replace(/^vector:\s*/, "") });
          return;
        }
        if (m && Number(m[1]) < rest.length) {
          const bad = rest[Number(m[1])];
          rejected.push({ row: bad.row, id: bad.id,
                          reason: reason.replace(ROW_IN_MESSAGE, "").replace(/^[:\s]+/, "") });
          rest = rest.filter((x) => x !== bad);
          report();
          continue;
        }
        // the refusal names no row: halves, each stored or split again, so k bad rows among
        // n cost about 2k·log2(n) requests
        const half = Math.ceil(rest.length / 2);
        await send(rest.slice(0, half));
        await send(rest.slice(half));
        return;
      }
    }
  }

  try {
    for (let i = 0; i < good.length; i += batchRows) {
      const batch = [];
      for (const r of good.slice(i, i + batchRows)) {
        const m = r.make ? r.make() : r;
        if (m.reason) rejected.push({ row: r.row, id: r.id, reason: m.reason });
        else batch.push({ row: r.row, id: r.id, item: m.item });
      }
      if (batch.length) await send(batch);
      report();
    }
  } catch (e) {
    report();
    rejected.sort((a, b) => a.row - b.row);
    return { stored, rejected, error: e };
  }
  rejected.sort((a, b) => a.row - b.row);
  return { stored, rejected, error: null };
}
