// The console's one way to the server: the public REST API with the signed-in user's token.
// Every failure becomes an ApiError whose message a person can read (the server's "message",
// its code and the HTTP status), so no view has to guess.

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

export const session = {
  token: sessionStorage.getItem("jade_token"),
  user: JSON.parse(sessionStorage.getItem("jade_user") || "null"),
  onExpired: null, // called when a call answers 401 with a token we believed in
};

export function saveSession(token, user) {
  session.token = token;
  session.user = user;
  if (token) {
    sessionStorage.setItem("jade_token", token);
    sessionStorage.setItem("jade_user", JSON.stringify(user));
  } else {
    sessionStorage.removeItem("jade_token");
    sessionStorage.removeItem("jade_user");
  }
}

export function isAdmin() {
  return Boolean(session.user && (session.user.roles || []).includes("admin"));
}

function describe(status, data, fallback) {
  if (data && typeof data === "object") {
    const text = data.message || data.error || fallback;
    const code = data.error && data.error !== text ? data.error : "";
    return { code, text };
  }
  return { code: "", text: fallback };
}

// method, path, JSON body (or undefined); opts.as: "json" (default), "text" or "blob";
// opts.anonymous: send no token (sign in); opts.token: this token, not the session's
export async function api(method, path, body, opts = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = opts.token || session.token;
  if (token && !opts.anonymous) headers.Authorization = "Bearer " + token;
  let r;
  try {
    r = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      signal: opts.signal, cache: "no-store",
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", "cannot reach the server (" + e.message + ")", null);
  }
  if (r.ok && method !== "GET") window.dispatchEvent(new Event("jade-write")); // header refresh
  if (r.ok && opts.as === "blob") return r.blob();
  if (r.ok && opts.as === "text") return r.text();
  const raw = await r.text();
  let data = null;
  try { data = raw ? JSON.parse(raw) : null; } catch (e) { data = raw; }
  if (!r.ok) {
    const { code, text } = describe(r.status, data, r.statusText || "request failed");
    const err = new ApiError(r.status, code, text + " (HTTP " + r.status
      + (code ? " " + code : "") + ")", data);
    err.retryAfter = Number(r.headers.get("Retry-After")) || null;
    if (r.status === 401 && session.token && token === session.token && !opts.anonymous
        && session.onExpired) {
      session.onExpired(err);
    }
    throw err;
  }
  return data;
}

export const enc = encodeURIComponent;
export const dbPath = (db, rest = "") => "/v1/databases/" + enc(db) + rest;
