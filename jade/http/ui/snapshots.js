// Snapshots (admin): take, list, verify (the server re-checks every file against the
// manifest), download (a tar streamed by the server), delete; the restorable window.

import { api, enc } from "./api.js";
import { $, button, confirmAction, el, fill, fmtBytes, fmtTime, say, sayError } from "./dom.js";

const verified = new Map(); // name -> {intact, problems, at}

function verifiedCell(s) {
  const v = verified.get(s.name);
  if (!v) return el("span", { class: "muted" }, "not yet");
  if (v.intact) return el("span", { class: "good" }, "intact ✓");
  return el("span", { class: "bad", title: v.problems.join("\n") },
    "damaged: " + v.problems.length + " problem" + (v.problems.length === 1 ? "" : "s"));
}

export async function loadSnapshots() {
  try {
    const [snaps, w] = await Promise.all([api("GET", "/v1/admin/snapshots"),
                                          api("GET", "/v1/admin/backup/window")]);
    const list = snaps.snapshots.slice().sort((a, b) => b.lsn - a.lsn);
    $("#snap-empty").hidden = list.length > 0;
    fill("#snapshots", list, [
      (s) => el("code", {}, s.name),
      (s) => s.lsn,
      (s) => s.epoch,
      (s) => fmtTime(s.created_at),
      (s) => fmtBytes(s.size_bytes),
      (s) => (s.signed ? "yes" : "no"),
      verifiedCell,
      (s) => el("span", { class: "actions" },
        button("Verify", () => verify(s.name), "small secondary"),
        button("Download", () => download(s), "small secondary"),
        button("Delete", () => remove(s.name), "small danger")),
    ]);
    $("#window").textContent = w.snapshots
      ? "Restorable from LSN " + w.earliest_lsn + " (" + fmtTime(w.earliest_time) + ") to LSN "
        + w.latest_lsn + " (" + fmtTime(w.latest_time) + ")."
      : "No snapshot yet: nothing is restorable.";
  } catch (e) {
    sayError("#snap-msg", e.status === 403 ? new Error("Snapshots are for administrators.") : e);
  }
}

async function take() {
  say("#snap-msg", "Taking a snapshot…");
  $("#snap-take").disabled = true;
  try {
    const s = await api("POST", "/v1/admin/snapshots");
    say("#snap-msg", "Took snapshot " + s.name + " at LSN " + s.lsn + " (" + fmtBytes(s.size_bytes) + ").", "ok");
  } catch (e) { sayError("#snap-msg", e); }
  $("#snap-take").disabled = false;
  await loadSnapshots();
}

async function verify(name) {
  say("#snap-msg", "Verifying " + name + "…");
  try {
    const r = await api("GET", "/v1/admin/snapshots/" + enc(name));
    verified.set(name, { intact: r.intact, problems: r.problems || [] });
    if (r.intact) {
      say("#snap-msg", "Snapshot " + name + " is intact: every file matches its manifest"
        + (r.signed ? " and the signature is valid." : " (it is not signed)."), "ok");
    } else {
      say("#snap-msg", "Snapshot " + name + " is damaged: " + r.problems.join("; "), "error");
    }
  } catch (e) { sayError("#snap-msg", e); }
  await loadSnapshots();
}

async function download(s) {
  say("#snap-msg", "Downloading " + s.name + " (" + fmtBytes(s.size_bytes) + ")…");
  try {
    // the token travels in a header, so the tar is fetched here and handed to the browser
    const blob = await api("GET", "/v1/admin/snapshots/" + enc(s.name) + "/download", undefined,
                           { as: "blob" });
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: s.name + ".tar", hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    say("#snap-msg", "Downloaded " + s.name + ".tar (" + fmtBytes(blob.size) + ").", "ok");
  } catch (e) { sayError("#snap-msg", e); }
}

async function remove(name) {
  if (!await confirmAction("Delete snapshot " + name + "?",
      "Its files are removed from the backup directory; the restorable window may shrink.",
      "Delete snapshot")) return;
  try {
    await api("DELETE", "/v1/admin/snapshots/" + enc(name));
    verified.delete(name);
    say("#snap-msg", "Deleted snapshot " + name + ".", "ok");
  } catch (e) { sayError("#snap-msg", e); }
  await loadSnapshots();
}

export function initSnapshots() {
  $("#snap-take").addEventListener("click", take);
}
