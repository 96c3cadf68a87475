"""The web console end to end in headless Chromium against a real server: each everyday task
done in the page (databases, adding vectors by paste, JSON lines and .npy with a progress bar
and a report of rejected rows, browsing, search, snapshots, read-only mode, the status charts)
and its effect checked through the API. Screenshots of every view are kept under the test's
temp dir (CI artifacts). Users, keys, grants and the sign-in states: tests/test_ui_users.py."""

from __future__ import annotations

import asyncio
import json
import re
import tarfile
import time

import numpy as np
import pytest
from playwright.async_api import expect

from tests.conftest import ADMIN_PASSWORD, Api
from tests.ui_browser import console, needs_chromium

pytestmark = needs_chromium


def write_inputs(tmp_path):
    """A .jsonl of 30 rows (3 refused: not JSON, the wrong dimension, an id the server
    refuses), a float32 .npy of 40 rows (one NaN row) and a float64 .npy of 10 rows."""
    rng = np.random.default_rng(7)
    lines = []
    for i in range(30):
        row = {"id": f"j{i}", "values": rng.random(4).round(4).tolist(),
               "metadata": {"category": "even" if i % 2 == 0 else "odd", "n": i}}
        if i == 5:
            lines.append("{not json")
            continue
        if i == 11:
            row["values"] = [1.0, 2.0]
        if i == 17:
            row["id"] = "has/slash"  # passes the page's checks; the server refuses it
        lines.append(json.dumps(row))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    f32 = tmp_path / "emb32.npy"
    a32 = rng.random((40, 4), dtype=np.float32)
    a32[7, 2] = np.nan
    np.save(f32, a32)
    f64 = tmp_path / "emb64.npy"
    np.save(f64, rng.random((10, 4)))
    return jsonl, f32, f64


async def count(server, db):
    st, body = await server.admin.get(f"/v1/databases/{db}")
    assert st == 200, body
    return body["stats"]["vectorCount"]


async def test_console_everyday_walk(server, tmp_path):
    jsonl, f32, f64 = write_inputs(tmp_path)
    async with console(server.base, tmp_path) as c:
        page = c.page
        await c.shot("01-login")
        # a wrong password is shown, not swallowed
        await c.sign_in("admin", "wrong")
        await expect(page.locator("#login-error")).to_contain_text("Invalid username or password")
        await c.sign_in("admin", ADMIN_PASSWORD)
        await page.wait_for_selector("#app:not([hidden])")
        await expect(page.locator("#role")).to_have_text("primary")
        await expect(page.locator("#mode")).to_have_text("readwrite")

        # -- databases: create two (index type, metric, parameters), delete one -------------
        await page.fill("#db-name", "walk")
        await page.fill("#db-dim", "4")
        await page.select_option("#db-index", "HNSW")
        await page.select_option("#db-metric", "euclidean")
        await page.fill("#db-m", "8")
        await page.fill("#db-efc", "64")
        await page.click("#db-create")
        await expect(page.locator("#db-form-msg")).to_contain_text("Created database walk")
        st, body = await server.admin.get("/v1/databases")
        (walk,) = [d for d in body["databases"] if d["name"] == "walk"]
        db = walk["databaseId"]
        assert walk["vectorDimension"] == 4 and walk["metric"] == "euclidean"
        assert walk["index"]["type"] == "HNSW" and walk["index"]["parameters"]["M"] == 8
        assert walk["index"]["parameters"]["efConstruction"] == 64
        await page.fill("#db-name", "scratch")
        await page.fill("#db-dim", "3")
        await page.select_option("#db-index", "FLAT")
        await expect(page.locator("#db-m")).to_be_hidden()  # no HNSW parameters for FLAT
        await page.click("#db-create")
        await expect(page.locator("#db-form-msg")).to_contain_text("Created database scratch")
        await expect(page.locator("#dbs tbody tr")).to_have_count(2)
        st, body = await server.admin.get("/v1/databases")
        scratch = next(d["databaseId"] for d in body["databases"] if d["name"] == "scratch")
        await c.shot("02-databases")
        # a refused create shows the server's message
        await page.fill("#db-name", "bad")
        await page.fill("#db-dim", "20000")
        await page.click("#db-create")
        await expect(page.locator("#db-form-msg")).to_contain_text("HTTP 400")
        # delete asks first; cancelling keeps it
        await page.click(f"#dbs button[data-db={scratch}]")
        await page.wait_for_selector("#dialog[open]")
        await expect(page.locator("#dialog-text")).to_contain_text(scratch)
        await page.click("#dialog-cancel")
        assert (await server.admin.get(f"/v1/databases/{scratch}"))[0] == 200
        await page.click(f"#dbs button[data-db={scratch}]")
        await c.confirm()
        await expect(page.locator("#dbs-msg")).to_contain_text("Deleted database scratch")
        assert (await server.admin.get(f"/v1/databases/{scratch}"))[0] == 404
        await expect(page.locator("#dbs tbody tr")).to_have_count(1)

        # -- vectors: paste JSON (one row refused here), then files --------------------------
        await c.view("vectors")
        await expect(page.locator("#vec-range")).to_contain_text("no vector yet")
        pasted = [
            {"id": "a", "values": [1, 0, 0, 0], "metadata": {"category": "even"}},
            {"id": "b", "values": [0.9, 0.1, 0, 0], "metadata": {"category": "odd"}},
            {"id": "c", "values": [0, 1, 0, 0], "metadata": {"category": "even"}},
            {"id": "short", "values": [1, 2]},
        ]
        await page.fill("#paste", json.dumps(pasted))
        await page.click("#paste-btn")
        await expect(page.locator("#add-msg")).to_contain_text("3 of 4 rows stored")
        await expect(page.locator("#reject-table tbody tr")).to_have_count(1)
        await expect(page.locator("#reject-table tbody")).to_contain_text("dimension mismatch")
        assert await count(server, db) == 3
        # a JSON-lines file in batches of 4: 27 stored, 3 rejected with their line numbers
        await page.click("#sub-file")
        await page.set_input_files("#file", str(jsonl))
        await page.fill("#batch-size", "4")
        await page.click("#upload-btn")
        await expect(page.locator("#add-msg")).to_contain_text("27 of 30 rows stored")
        rejects = await page.locator("#reject-table tbody tr").all_text_contents()
        assert len(rejects) == 3, rejects
        assert rejects[0].startswith("6") and "not valid JSON" in rejects[0]
        assert rejects[1].startswith("12j11") and "dimension mismatch" in rejects[1]
        assert rejects[2].startswith("18has/slash") and "'/'" in rejects[2]
        assert await page.get_attribute("#progress", "value") == "30"
        progress = await page.text_content("#progress-text") or ""
        assert progress.startswith("30 of 30 rows: 27 stored, 3 rejected"), progress
        await c.shot("03-vectors-upload")
        assert await count(server, db) == 30
        # .npy files: float32 with a chosen prefix, float64 with the generated one
        await page.set_input_files("#file", str(f32))
        await page.fill("#id-prefix", "np-")
        await page.fill("#batch-size", "")
        await page.click("#upload-btn")
        await expect(page.locator("#add-msg")).to_contain_text("39 of 40 rows stored")
        await expect(page.locator("#reject-table tbody tr")).to_have_text(
            ["8np-7value 2 is not a finite float32 (NaN)"])
        await page.set_input_files("#file", str(f64))
        await page.fill("#id-prefix", "")
        await page.click("#upload-btn")
        await expect(page.locator("#add-msg")).to_contain_text("10 of 10 rows stored")
        await expect(page.locator("#rejects")).to_be_hidden()
        assert await count(server, db) == 79
        assert (await server.admin.get(f"/v1/databases/{db}/vectors/np-7"))[0] == 404
        st, v = await server.admin.get(f"/v1/databases/{db}/vectors/np-39")
        assert st == 200 and np.allclose(v["values"], np.load(f32)[39])
        st, v = await server.admin.get(f"/v1/databases/{db}/vectors/emb64-9")
        assert st == 200 and np.allclose(v["values"], np.load(f64)[9], atol=1e-6)
        # a file that is not a .npy says so
        bad = tmp_path / "bad.npy"
        bad.write_bytes(b"not numpy at all")
        await page.set_input_files("#file", str(bad))
        await page.click("#upload-btn")
        await expect(page.locator("#add-msg")).to_contain_text("not a .npy file")

        # -- browse: pages of 10, view one, delete one ----------------------------------------
        await page.select_option("#vec-limit", "10")
        await expect(page.locator("#vec-range")).to_have_text("vectors 1–10 of 79")
        await page.click("#vec-next")
        await expect(page.locator("#vec-range")).to_have_text("vectors 11–20 of 79")
        await expect(page.locator("#vectors tbody tr")).to_have_count(10)
        await page.fill("#vec-id", "b")
        await page.click("#vec-get")
        await expect(page.locator("#detail-id")).to_have_text("b")
        await expect(page.locator("#detail-meta")).to_contain_text('"category": "odd"')
        await c.shot("04-vector-detail")
        await page.click("#detail-delete")
        await c.confirm()
        await expect(page.locator("#vec-msg")).to_contain_text("Deleted vector b")
        assert (await server.admin.get(f"/v1/databases/{db}/vectors/b"))[0] == 404
        await expect(page.locator("#vec-range")).to_contain_text("of 78")
        await page.fill("#vec-id", "b")
        await page.click("#vec-get")
        await expect(page.locator("#vec-msg")).to_contain_text("No vector b")

        # -- search: a stored vector's values, a filter, topK ---------------------------------
        await page.fill("#vec-id", "a")
        await page.click("#vec-get")
        await expect(page.locator("#detail-id")).to_have_text("a")
        await page.click("#detail-query")  # "search with its values"
        await page.wait_for_selector("#view-search:not([hidden])")
        assert json.loads(await page.input_value("#query")) == [1, 0, 0, 0]
        await page.fill("#filters", '{"category": "even"}')
        await page.fill("#topk", "3")
        await page.click("#search-btn")
        await expect(page.locator("#results tbody tr")).to_have_count(3)
        rows = await page.locator("#results tbody tr").all_text_contents()
        assert rows[0].startswith("1a") and all("odd" not in r for r in rows)
        await expect(page.locator("#search-summary")).to_contain_text("3 results")
        await c.shot("05-search")
        # "use as query" on a result, and a bad filter shows the server's message
        await page.locator("#results tbody tr").nth(1).locator("button").click()
        await expect(page.locator("#pick-id")).not_to_have_value("a")
        await page.fill("#filters", '{"category": {"$bogus": 1}}')
        await page.click("#search-btn")
        await expect(page.locator("#search-error")).to_contain_text("$bogus")
        await page.fill("#filters", "{oops")
        await page.click("#search-btn")
        await expect(page.locator("#search-error")).to_contain_text("not valid JSON")

        # -- snapshots: take, verify, download, delete ----------------------------------------
        await c.view("snapshots")
        await expect(page.locator("#snap-empty")).to_be_visible()
        await page.click("#snap-take")
        await expect(page.locator("#snap-msg")).to_contain_text("Took snapshot")
        st, body = await server.admin.get("/v1/admin/snapshots")
        (snap,) = body["snapshots"]
        await expect(page.locator("#snapshots tbody tr")).to_have_count(1)
        await page.click("#snapshots button:has-text('Verify')")
        await expect(page.locator("#snap-msg")).to_contain_text("is intact")
        await expect(page.locator("#snapshots tbody")).to_contain_text("intact ✓")
        async with page.expect_download() as got:
            await page.click("#snapshots button:has-text('Download')")
        download = await got.value
        assert download.suggested_filename == snap["name"] + ".tar"
        tar_path = tmp_path / "snap.tar"
        await download.save_as(tar_path)
        with tarfile.open(tar_path) as tar:
            assert any(n.startswith(snap["name"] + "/") for n in tar.getnames())
        await expect(page.locator("#window")).to_contain_text("Restorable from LSN")
        await c.shot("06-snapshots")
        await page.click("#snapshots button:has-text('Delete')")
        await c.confirm()
        await expect(page.locator("#snap-msg")).to_contain_text("Deleted snapshot")
        st, body = await server.admin.get("/v1/admin/snapshots")
        assert body["snapshots"] == []

        # -- status: charts, no replicas, read-only on and off --------------------------------
        await c.view("status")
        await expect(page.locator("#chart-replicas")).to_contain_text("no replicas")
        await expect(page.locator("#repl-summary")).to_contain_text("no replicas")
        assert "max lag" not in await page.text_content("#view-status")
        # two samples make a rate and percentiles: lines in the request and latency charts
        await expect(page.locator("#chart-rate path")).to_have_count(1)
        await expect(page.locator("#chart-latency path")).not_to_have_count(0)
        # the test server runs inside pytest's worker (models, browsers' clients): MiB or GiB
        await expect(page.locator("#chart-memory figcaption")).to_contain_text(
            re.compile(r"\d+(\.\d+)? [MG]iB"))
        await expect(page.locator("#audit tbody tr").first).to_be_visible()
        await page.click("#readonly-btn")
        await expect(page.locator("#status-msg")).to_contain_text("Read-only")
        st, body = await server.admin.get("/status")
        assert body["mode"] == "readonly"
        await expect(page.locator("#mode")).to_have_text("readonly")
        await c.shot("07-status-readonly")
        # a write in read-only mode: the refusal is shown, nothing is stored
        await c.view("vectors")
        await page.click("#sub-paste")
        await page.fill("#paste", '{"id": "ro", "values": [1, 1, 1, 1]}')
        await page.click("#paste-btn")
        await expect(page.locator("#add-msg")).to_contain_text("read_only")
        assert (await server.admin.get(f"/v1/databases/{db}/vectors/ro"))[0] == 404
        await c.view("status")
        await page.click("#readonly-btn")
        await expect(page.locator("#status-msg")).to_contain_text("accepted again")
        st, body = await server.admin.get("/status")
        assert body["mode"] == "readwrite"
        await c.shot("08-status")

        # signing out ends the page's session on the server
        token = await page.evaluate("sessionStorage.getItem('jade_token')")
        as_page = Api(server.base, server.anon.session, {"Authorization": f"Bearer {token}"})
        assert (await as_page.get("/status"))[0] == 200
        await page.click("#logout")
        await page.wait_for_selector("#login-panel:not([hidden])")
        await expect(page.locator("#banner")).to_be_hidden()
        deadline = time.monotonic() + 5
        while (await as_page.get("/status"))[0] != 401:
            assert time.monotonic() < deadline, "the token still works after signing out"
            await asyncio.sleep(0.05)
        assert await page.evaluate("sessionStorage.getItem('jade_token')") is None
    assert await count(server, db) == 78


NPY_IN_PAGE = """async (b64) => {
    const m = await import("/ui/npy.js");
    const buf = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
    try {
        const a = m.parseNpy(buf);
        const rows = [];
        for (let i = 0; i < a.rows; i++) rows.push(Array.from(a.row(i)));
        return {shape: [a.rows, a.cols], dtype: a.dtype, rows};
    } catch (e) { return {error: e.message}; }
}"""


def npy_bytes(arr, version=None):
    import io

    out = io.BytesIO()
    np.lib.format.write_array(out, arr, version=version)
    return out.getvalue()


async def test_console_reads_npy_layouts_and_latency_quantiles(server, tmp_path):
    """The page's own readers, run in the browser: .npy in C and Fortran order, big-endian,
    format version 2, a 1-D array; clear refusals of other arrays; and the latency quantiles
    taken from two samples of a Prometheus histogram."""
    import base64

    rng = np.random.default_rng(3)
    a = rng.random((5, 3))
    cases = [
        (a.astype("<f4"), None),
        (np.asfortranarray(a), None),
        (a.astype(">f4"), None),
        (a.astype(">f8"), (2, 0)),
        (a[0].astype("<f4"), None),
    ]
    async with console(server.base, tmp_path) as c:
        for arr, version in cases:
            b64 = base64.b64encode(npy_bytes(arr, version)).decode()
            got = await c.page.evaluate(NPY_IN_PAGE, b64)
            assert "error" not in got, got
            want = arr.reshape(1, -1) if arr.ndim == 1 else arr
            assert got["shape"] == list(want.shape)
            assert got["dtype"] == ("float32" if arr.dtype.itemsize == 4 else "float64")
            assert np.allclose(got["rows"], want.astype(np.float32)), (arr.dtype, got)
        refused = [
            (np.arange(6).reshape(2, 3), "only float32"),
            (np.zeros((2, 2, 2), "<f4"), "2-D array"),
            (npy_bytes(a.astype("<f4"))[:-8], "shorter than its header"),
            (b"\x93NUMPY\x09\x00\x00\x00", "not supported"),
        ]
        for arr, why in refused:
            raw = arr if isinstance(arr, bytes) else npy_bytes(arr)
            got = await c.page.evaluate(NPY_IN_PAGE, base64.b64encode(raw).decode())
            assert why in got.get("error", ""), (why, got)
        q = await c.page.evaluate("""async () => {
            const m = await import("/ui/status.js");
            const inf = Infinity;
            const before = [[0.1, 0], [0.5, 0], [1, 0], [inf, 0]];
            const after = [[0.1, 10], [0.5, 20], [1, 20], [inf, 20]];
            const tail = [[0.1, 0], [0.5, 0], [1, 5], [inf, 10]];
            return [m.quantile(0.5, before, after), m.quantile(0.75, before, after),
                    m.quantile(0.99, before, tail), m.quantile(0.5, after, after)];
        }""")
        assert q[:2] == pytest.approx([0.1, 0.3]) and q[2] == 1 and q[3] is None, q
