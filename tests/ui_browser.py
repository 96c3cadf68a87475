"""Driving the web console in headless Chromium (Debian's ``chromium``, driven by Playwright
with ``executable_path``: never a downloaded browser) for the tests/test_ui*.py walks.

The console runs under its Content-Security-Policy (no inline script, no eval), so nothing
here uses ``page.wait_for_function`` (it evaluates a string in the page, which the policy
refuses, as it should); locator assertions (``expect``) run in Playwright's own world and
are fine. Every page error and every CSP refusal is collected and fails the test."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
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


@dataclass
class Console:
    page: Any
    base: str
    shots: Path
    errors: list[str] = field(default_factory=list)

    async def shot(self, name: str) -> Path:
        await self.page.wait_for_timeout(250)  # the header's refresh after the last change
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    async def sign_in(self, username: str, password: str, totp: str = "") -> None:
        await self.page.fill("#username", username)
        await self.page.fill("#password", password)
        await self.page.fill("#totp", totp)
        await self.page.click("#login-btn")

    async def view(self, name: str) -> None:
        await self.page.click(f"#tabs a[data-view={name}]")
        await self.page.wait_for_selector(f"#view-{name}:not([hidden])")

    async def confirm(self) -> None:
        """Press OK in the console's confirmation dialog."""
        await self.page.wait_for_selector("#dialog[open]")
        await self.page.click("#dialog-ok")
        await self.page.wait_for_selector("#dialog:not([open])", state="attached")


@asynccontextmanager
async def console(base: str, tmp_path: Path) -> AsyncIterator[Console]:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=15_000)  # a loaded machine (make test runs two workers)

    shots = tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        ctx = await browser.new_context(viewport={"width": 1280, "height": 860},
                                        accept_downloads=True)
        page = await ctx.new_page()
        page.set_default_timeout(15_000)
        c = Console(page, base, shots)
        page.on("pageerror", lambda e: c.errors.append(str(e)))
        page.on("console", lambda m: c.errors.append(m.text)
                if "Content Security Policy" in m.text else None)
        await page.goto(base + "/ui")
        try:
            yield c
        finally:
            await browser.close()
    assert not c.errors, c.errors
