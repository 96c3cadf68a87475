// What the views share: the database list (refreshed by any view that changes it) and the
// database the user works on, kept in every database <select> of the page.

import { api } from "./api.js";
import { $$, el } from "./dom.js";

export const state = {
  databases: [],
  current: sessionStorage.getItem("jade_db") || "",
  listeners: [],
};

export function onDatabases(f) { state.listeners.push(f); }

export function currentDb() {
  return state.databases.find((d) => d.databaseId === state.current) || null;
}

export function setCurrent(id) {
  state.current = id || "";
  sessionStorage.setItem("jade_db", state.current);
  for (const sel of $$(".db-select")) if (sel.value !== state.current) sel.value = state.current;
}

export async function loadDatabases() {
  const r = await api("GET", "/v1/databases?limit=1000");
  state.databases = r.databases || [];
  if (!state.databases.some((d) => d.databaseId === state.current)) {
    setCurrent(state.databases.length ? state.databases[0].databaseId : "");
  }
  for (const sel of $$(".db-select")) {
    sel.replaceChildren(...state.databases.map((d) => el("option", { value: d.databaseId },
      d.name + " · " + d.vectorDimension + "-d · " + d.stats.vectorCount + " vectors")));
    if (!state.databases.length) sel.append(el("option", { value: "" }, "no database yet"));
    sel.value = state.current;
  }
  for (const f of state.listeners) f(state.databases);
  return state.databases;
}
