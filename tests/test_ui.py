"""The web console end to end in headless Chromium (Debian's ``chromium``, driven by
Playwright with ``executable_path``): sign in, databases with counts and index info, a search
with a filter, log position and mode, replication and backups panels, audit events.
Screenshots are kept under the test's temp dir (CI artifacts)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import ADMIN_PASSWORD

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (make test installs it; see Makefile)",
)

ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def wait_until(page, selector, ok, *, value=False, timeout=10.0):
    """Poll an element's text (or an input's value) until ``ok`` says yes. Not
    ``page.wait_for_function``: it evaluates a string in the page, which the console's
    Content-Security-Policy (no 'unsafe-eval') refuses, as it should."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        text = await (page.input_value(selector) if value else page.text_content(selector))
        if ok(text or ""):
            return
        assert time.monotonic() < deadline, f"{selector}: {text!r}"
        await asyncio.sleep(0.05)


async def test_console_end_to_end(server, tmp_path):
    from playwright.async_api import async_playwright

    db = await server.admin.create_db(dim=3, indexType="IVF")
    vecs = [
        {"id": "a", "values": [1, 0, 0], "metadata": {"category": "even"}},
        {"id": "b", "values": [0.9, 0.1, 0], "metadata": {"category": "odd"}},
        {"id": "c", "values": [0, 1, 0], "metadata": {"category": "even"}},
    ]
    st, _ = await server.admin.post(f"/v1/databases/{db}/vectors/batch", {"vectors": vecs})
    assert st == 201
    st, _ = await server.admin.post("/v1/admin/snapshots")
    assert st == 201
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # the console runs under its Content-Security-Policy: nothing of it may be refused
        page.on("console", lambda m: errors.append(m.text)
                if "Content Security Policy" in m.text else None)
        await page.goto(server.base + "/ui")
        await page.screenshot(path=str(shots / "01-login.png"))
        # a wrong password is shown, not swallowed
        await page.fill("#username", "admin")
        await page.fill("#password", "wrong")
        await page.click("#login-btn")
        await wait_until(page, "#login-error", lambda t: t != "")
        assert "Invalid" in await page.text_content("#login-error")
        await page.fill("#password", ADMIN_PASSWORD)
        await page.click("#login-btn")
        await page.wait_for_selector("#dbs tbody tr")
        row = await page.text_content("#dbs tbody tr")
        assert db in row and "3" in row and "IVF" in row and "hnsw" in row
        await wait_until(page, "#lsn", lambda t: t != "–")
        assert await page.text_content("#mode") == "readwrite"
        assert await page.text_content("#role") == "primary"
        assert int(await page.text_content("#lsn")) >= 5
        # search playground: pick a stored vector, filter, results table
        await page.select_option("#search-db", db)
        await page.fill("#pick-id", "a")
        await page.click("#pick-btn")
        await wait_until(page, "#query", lambda t: len(t) > 0, value=True)
        await page.fill("#filters", '{"category": "even"}')
        await page.click("#search-btn")
        await page.wait_for_selector("#results tbody tr")
        rows = await page.locator("#results tbody tr").all_text_contents()
        assert len(rows) == 2 and "a" in rows[0] and all("odd" not in r for r in rows)
        # a bad filter shows the server's message
        await page.fill("#filters", '{"category": {"$bogus": 1}}')
        await page.click("#search-btn")
        await wait_until(page, "#search-error", lambda t: t != "")
        assert "$bogus" in await page.text_content("#search-error")
        # backups and audit panels
        await page.wait_for_selector("#snapshots tbody tr")
        assert "restorable from LSN" in await page.text_content("#window")
        await page.wait_for_selector("#audit tbody tr")
        assert "AUTHENTICATION" in await page.text_content("#audit")
        assert "primary at LSN" in await page.text_content("#repl-summary")
        await page.screenshot(path=str(shots / "02-console.png"), full_page=True)
        await page.click("#logout")
        await page.wait_for_selector("#login-panel:not([hidden])")
        await browser.close()
    assert not errors, errors
    assert os.path.getsize(shots / "02-console.png") > 10_000
