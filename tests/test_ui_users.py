"""The web console's accounts in headless Chromium against a real server: an admin manages
users (create, disable and enable, reset a password, delete), API keys (shown once, revoked)
and grants; a user signs in with a temporary password and must change it; a database owner
grants and revokes; two-factor sign-in and enrolment. Effects are checked through the API."""

from __future__ import annotations

import time

import pyotp
from playwright.async_api import expect

from tests.conftest import ADMIN_PASSWORD, Api, make_settings, running_server
from tests.ui_browser import console, needs_chromium

pytestmark = needs_chromium

WALKER_TEMP = "Walker_Temp123@"
WALKER_NEW = "Walker_Own456@"


async def user_by_name(server, name):
    st, body = await server.admin.get("/v1/users")
    assert st == 200, body
    return next((u for u in body["users"] if u["username"] == name), None)


async def test_console_users_keys_grants(server, tmp_path):
    shared = await server.admin.create_db(dim=3)
    async with console(server.base, tmp_path) as c:
        page = c.page
        await c.sign_in("admin", ADMIN_PASSWORD)
        await page.wait_for_selector("#app:not([hidden])")
        await c.view("users")
        await expect(page.locator("#me-name")).to_have_text("admin")

        # -- users: create two, delete one, disable and enable the other -------------------
        for name in ("walker", "gone"):
            await page.fill("#user-name", name)
            await page.fill("#user-pass", WALKER_TEMP)
            await page.click("#user-create")
            await expect(page.locator("#user-msg")).to_contain_text(f"Created user {name}")
        walker = await user_by_name(server, "walker")
        gone = await user_by_name(server, "gone")
        assert walker["roles"] == ["user"] and walker["is_active"]
        await page.click("#users [data-user=gone] button:has-text('Delete')")
        await c.confirm()
        await expect(page.locator("#user-msg")).to_contain_text("Deleted user gone")
        assert (await server.admin.get(f"/v1/users/{gone['user_id']}"))[0] == 404
        await page.click("#users [data-user=walker] button:has-text('Disable')")
        await c.confirm()
        await expect(page.locator("#user-msg")).to_contain_text("Disabled walker")
        assert not (await user_by_name(server, "walker"))["is_active"]
        await page.click("#users [data-user=walker] button:has-text('Enable')")
        await expect(page.locator("#user-msg")).to_contain_text("Enabled walker")
        assert (await user_by_name(server, "walker"))["is_active"]
        # a refused create shows the server's reason
        await page.fill("#user-name", "walker")
        await page.fill("#user-pass", WALKER_TEMP)
        await page.click("#user-create")
        await expect(page.locator("#user-msg")).to_contain_text("already exists")

        # -- API keys: the key is shown once, works, is revoked --------------------------------
        await page.fill("#key-desc", "ci pipeline")
        await page.check("#key-form .scopes input[value=read]")
        await page.click("#key-create")
        await expect(page.locator("#new-key")).to_be_visible()
        raw = (await page.text_content("#new-key-value")) or ""
        by_key = Api(server.base, server.anon.session, {"Authorization": f"Bearer {raw}"})
        assert (await by_key.get("/status"))[0] == 200
        await expect(page.locator("#keys tbody")).to_contain_text("ci pipeline")
        await expect(page.locator("#keys tbody tr").first).to_contain_text("read")
        assert raw not in (await page.text_content("#keys")), "the table never shows the key"
        await c.shot("01-users-keys")
        await page.click("#new-key-done")
        await expect(page.locator("#new-key")).to_be_hidden()
        assert raw not in (await page.content())  # shown once: gone from the page
        await page.click("#keys tbody tr:has-text('ci pipeline') button:has-text('Revoke')")
        await c.confirm()
        await expect(page.locator("#key-msg")).to_contain_text("Revoked key")
        assert (await by_key.get("/status"))[0] == 401
        await expect(page.locator("#keys tbody tr:has-text('ci pipeline')")).to_contain_text(
            "revoked")

        # -- grants: read for walker by name, revoked, granted again -------------------------
        await c.view("databases")
        await page.click(f"#dbs tr:has-text('{shared}') button:has-text('Grants')")
        await expect(page.locator("#grants-card")).to_be_visible()
        await page.fill("#grant-user", "walker")
        await page.click("#grant-btn")
        await expect(page.locator("#grants-msg")).to_contain_text("Granted read to walker")
        st, body = await server.admin.get(f"/v1/databases/{shared}/grants")
        assert body["grants"] == [{"user_id": walker["user_id"], "permission": "read"}]
        await expect(page.locator("#grants tbody")).to_contain_text("walker")
        await c.shot("02-grants")
        await page.click("#grants tbody button:has-text('Revoke')")
        await c.confirm()
        await expect(page.locator("#grants-msg")).to_contain_text("Revoked the grant of walker")
        st, body = await server.admin.get(f"/v1/databases/{shared}/grants")
        assert body["grants"] == []
        await page.fill("#grant-user", "walker")
        await page.click("#grant-btn")
        await expect(page.locator("#grants-msg")).to_contain_text("Granted read")

        # -- reset walker's password: a temporary one ----------------------------------------
        await c.view("users")
        await page.click("#users [data-user=walker] button:has-text('Reset password')")
        await page.wait_for_selector("#dialog[open]")
        await page.fill("#dialog-fields input[name=password]", WALKER_TEMP)
        await page.click("#dialog-ok")
        await expect(page.locator("#user-msg")).to_contain_text("Reset the password of walker")
        assert (await user_by_name(server, "walker"))["must_change_password"]
        await page.click("#logout")
        await page.wait_for_selector("#login-panel:not([hidden])")

        # -- walker: the temporary password must be changed first ----------------------------
        await c.sign_in("walker", WALKER_TEMP)
        await page.wait_for_selector("#change-panel:not([hidden])")
        await c.shot("03-temporary-password")
        await page.fill("#change-old", WALKER_TEMP)
        await page.fill("#change-new", WALKER_NEW)
        await page.fill("#change-new2", WALKER_NEW + "x")
        await page.click("#change-btn")
        await expect(page.locator("#change-error")).to_contain_text("differ")
        await page.fill("#change-new2", WALKER_NEW)
        await page.click("#change-btn")
        await page.wait_for_selector("#app:not([hidden])")
        assert not (await user_by_name(server, "walker"))["must_change_password"]
        assert await page.is_hidden("#tabs a[data-view=snapshots]")  # admins only
        # the granted database is listed; walker creates one and grants it (as its owner)
        await c.view("databases")
        await expect(page.locator("#dbs tbody")).to_contain_text(shared)
        await page.fill("#db-name", "mine")
        await page.fill("#db-dim", "2")
        await page.click("#db-create")
        await expect(page.locator("#db-form-msg")).to_contain_text("Created database mine")
        await page.click("#dbs tr:has-text('mine') button:has-text('Grants')")
        await page.fill("#grant-user", server.user_id)
        await page.select_option("#grant-perm", "write")
        await page.click("#grant-btn")
        await expect(page.locator("#grants-msg")).to_contain_text("Granted write")
        st, body = await server.admin.get("/v1/databases")
        mine = next(d["databaseId"] for d in body["databases"] if d["name"] == "mine")
        st, body = await server.admin.get(f"/v1/databases/{mine}/grants")
        assert body["owner"] == walker["user_id"]
        assert body["grants"] == [{"user_id": server.user_id, "permission": "write"}]
        # walker's own account view: no user administration
        await c.view("users")
        await expect(page.locator("#me-name")).to_have_text("walker")
        assert await page.is_hidden("#users")
        await page.click("#logout")
        await page.wait_for_selector("#login-panel:not([hidden])")


async def test_console_two_factor_enrolment_and_sign_in(tmp_path):
    """Where admins need two-factor authentication, the console enrols them (secret shown,
    code confirmed), then asks for the code at sign-in and says so when it is missing."""
    async with running_server(make_settings(tmp_path, require_admin_totp=True)) as srv, \
            console(srv.base, tmp_path) as c:
        page = c.page
        await c.sign_in("admin", ADMIN_PASSWORD)
        await page.wait_for_selector("#enrol-panel:not([hidden])")
        await page.click("#enrol-start")
        await expect(page.locator("#enrol-uri")).to_contain_text("otpauth://")
        secret = (await page.text_content("#enrol-key")) or ""
        await c.shot("01-enrol")
        totp = pyotp.TOTP(secret)
        now = time.time()
        await page.fill("#enrol-code", totp.at(now))
        await page.click("#enrol-btn")
        await page.wait_for_selector("#login-panel:not([hidden])")
        await expect(page.locator("#banner")).to_contain_text("Two-factor authentication is on")
        st, body = await srv.anon.post("/v1/auth/login", {
            "username": "admin", "password": ADMIN_PASSWORD})
        assert st == 401 and body["error"] == "totp_required", body
        # no code: the page asks for it
        await c.sign_in("admin", ADMIN_PASSWORD)
        await expect(page.locator("#login-error")).to_contain_text("two-factor authentication")
        await expect(page.locator("#totp-label")).to_have_class("wanted")
        await c.shot("02-code-wanted")
        # the next step's code (the enrolment used this one)
        await c.sign_in("admin", ADMIN_PASSWORD, totp.at(now + 30))
        await page.wait_for_selector("#app:not([hidden])")
        await expect(page.locator("#who")).to_have_text("admin (admin)")
