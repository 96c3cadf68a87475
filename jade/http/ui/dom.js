// Small DOM helpers: elements are built with textContent only (no innerHTML: a stored string
// can never become markup), messages, tables, the confirmation dialog.

export const $ = (s, root = document) => root.querySelector(s);
export const $$ = (s, root = document) => Array.from(root.querySelectorAll(s));

// el("td", {class: "x", onclick: f}, "text", child...)
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export function button(text, onclick, cls = "small", attrs = {}) {
  return el("button", { type: "button", class: cls, onclick, ...attrs }, text);
}

// rows: objects; cols: functions row -> string | Node
export function fill(table, rows, cols) {
  const tb = (typeof table === "string" ? $(table) : table).querySelector("tbody");
  tb.replaceChildren(...rows.map((row) => el("tr", {}, ...cols.map((c) => {
    const v = c(row);
    return el("td", {}, v instanceof Node ? v : v === undefined || v === null ? "–" : String(v));
  }))));
}

// a message line: kind "ok" | "error" | "info"; empty text clears it
export function say(target, text, kind = "info") {
  const e = typeof target === "string" ? $(target) : target;
  e.textContent = text || "";
  e.className = "msg " + (text ? kind : "");
}

export function sayError(target, e) {
  say(target, e && e.message ? e.message : String(e), "error");
}

export function fmtBytes(n) {
  if (n === null || n === undefined || n < 0) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}

export function fmtTime(t) {
  if (t === null || t === undefined || t === "") return "–";
  const d = typeof t === "number" ? new Date(t > 1e12 ? t : t * 1000) : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function short(text, n = 80) {
  const s = typeof text === "string" ? text : JSON.stringify(text);
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

export function previewValues(values) {
  if (!Array.isArray(values)) return "–";
  const head = values.slice(0, 4).map((x) => Number(x).toFixed(3)).join(", ");
  return "[" + head + (values.length > 4 ? ", …" : "") + "] (" + values.length + ")";
}

// The one modal: a question (and optional input fields); resolves to null when cancelled,
// else to {name: value} of the fields ({} when there are none).
export function ask(title, text, fields = [], okText = "OK", danger = false) {
  const dlg = $("#dialog");
  $("#dialog-title").textContent = title;
  $("#dialog-text").textContent = text;
  const box = $("#dialog-fields");
  box.replaceChildren(...fields.map((f) => el("label", {}, f.label,
    el("input", { name: f.name, type: f.type || "text", required: f.required !== false,
                  autocomplete: f.type === "password" ? "new-password" : "off" }))));
  const ok = $("#dialog-ok");
  ok.textContent = okText;
  ok.className = danger ? "danger" : "";
  return new Promise((resolve) => {
    const form = $("#dialog-form");
    const done = (value) => {
      form.removeEventListener("submit", onSubmit);
      $("#dialog-cancel").removeEventListener("click", onCancel);
      dlg.removeEventListener("cancel", onCancel);
      dlg.close();
      resolve(value);
    };
    const onSubmit = (ev) => {
      ev.preventDefault();
      const out = {};
      for (const f of fields) out[f.name] = form.elements[f.name].value;
      done(out);
    };
    const onCancel = (ev) => { ev.preventDefault(); done(null); };
    form.addEventListener("submit", onSubmit);
    $("#dialog-cancel").addEventListener("click", onCancel);
    dlg.addEventListener("cancel", onCancel);
    dlg.showModal();
    (box.querySelector("input") || ok).focus();
  });
}

export const confirmAction = (title, text, okText) => ask(title, text, [], okText, true)
  .then((v) => v !== null);
