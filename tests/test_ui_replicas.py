"""The console's status view with a replica, in headless Chromium: on the primary the replica
lag chart draws one line per follower and the replicas table lists it; on the replica the
page says so (role, mode, its own lag) and offers no read-only switch."""

from __future__ import annotations

import asyncio

import aiohttp
from playwright.async_api import expect

from tests.test_replication import ADMIN_PASSWORD, Node, bootstrap_auth, client, wait_converged
from tests.ui_browser import console, needs_chromium

pytestmark = needs_chromium


async def test_console_status_with_a_replica(tmp_path):
    root = str(tmp_path / "nodes")
    primary = await Node(root, "primary").astart()
    nodes = [primary]
    try:
        creds = await asyncio.to_thread(bootstrap_auth, primary.base)
        nodes.append(await Node(root, "r1", follow=primary.base, key=creds.repl_key).astart())
        async with aiohttp.ClientSession() as s:
            await wait_converged(client(s, primary.base, creds.admin_token),
                                 [client(s, nodes[1].base, creds.admin_token)])
        async with console(primary.base, tmp_path / "primary") as c:
            await c.sign_in("admin", ADMIN_PASSWORD)
            await c.page.wait_for_selector("#app:not([hidden])")
            await c.view("status")
            await expect(c.page.locator("#replicas tbody tr")).to_have_count(1)
            await expect(c.page.locator("#replicas tbody")).to_contain_text("r1")
            await expect(c.page.locator("#repl-summary")).to_contain_text("with 1 replica")
            await expect(c.page.locator("#chart-replicas figcaption")).to_contain_text("r1 0")
            await expect(c.page.locator("#chart-replicas path")).to_have_count(1)
            assert "no replicas" not in (await c.page.text_content("#chart-replicas") or "")
            await c.shot("primary-status")
        async with console(nodes[1].base, tmp_path / "replica") as c:
            # a replica cannot record a sign-in: the page says so and offers a credential
            await c.sign_in("admin", ADMIN_PASSWORD)
            await expect(c.page.locator("#login-error")).to_contain_text("read replica")
            await expect(c.page.locator("#key-login-value")).to_be_visible()
            await c.shot("replica-login")
            # a user's API key: the console finds whose it is
            await c.page.fill("#key-login-value", creds.user_key)
            await c.page.click("#key-login-btn")
            await c.page.wait_for_selector("#app:not([hidden])")
            await expect(c.page.locator("#who")).to_have_text("tester")
            await c.page.click("#logout")
            await c.page.wait_for_selector("#login-panel:not([hidden])")
            async with aiohttp.ClientSession() as s:  # forgotten here, not revoked
                st, _ = await client(s, primary.base, creds.user_key).get("/status")
                assert st == 200
            # the admin's token from the primary
            await c.page.click("#key-login summary")
            await c.page.fill("#key-login-value", creds.admin_token)
            await c.page.click("#key-login-btn")
            await c.page.wait_for_selector("#app:not([hidden])")
            await expect(c.page.locator("#who")).to_have_text("admin (admin)")
            await c.view("status")
            await expect(c.page.locator("#role")).to_have_text("replica")
            await expect(c.page.locator("#mode-text")).to_have_text("refused (replica)")
            await expect(c.page.locator("#readonly-btn")).to_be_hidden()
            await expect(c.page.locator("#repl-summary")).to_contain_text("Replica of")
            await expect(c.page.locator("#chart-replicas figcaption")).to_contain_text(
                "this replica")
            await c.shot("replica-status")
            # a write on a replica: the refusal is shown
            await c.view("databases")
            await c.page.fill("#db-name", "nope")
            await c.page.fill("#db-dim", "3")
            await c.page.click("#db-create")
            await expect(c.page.locator("#db-form-msg")).to_contain_text("not_primary")
    finally:
        for n in nodes:
            n.stop()
