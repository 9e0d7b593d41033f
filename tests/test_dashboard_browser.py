"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): an event created
through the form reaches a polling VEN and its chart fills, live, without reloading the page;
the same form modifies it and a button cancels it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from tests.test_ven_fleet import FAST, registered
from tests.venkit import PROGRAM, running_fleet, ven_spec
from tests.vtnkit import running_vtn

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: .ci/run installs it
# no sandbox (containers), no GPU, and nothing that reaches out to Google's services
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 30_000  # upper bound of each wait; they end as soon as the page shows the state


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            await b.close()


async def open_dashboard(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """The dashboard page, and the console errors it logs (none expected)."""
    page = await browser.new_page()
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url + "/")
    return page, errors


async def test_an_event_from_the_form_is_delivered_and_charted_live(browser: Browser) -> None:
    async with running_vtn(**FAST) as vtn, running_fleet([ven_spec(vtn.oadr_url, "agg-1")]):
        (ven_id,) = await registered(vtn, 1)
        page, errors = await open_dashboard(browser, vtn.url)
        await expect(page.locator("#live")).to_have_text("connected", timeout=WAIT_MS)
        await page.evaluate("window.sameDocument = true")  # gone if the page reloads
        await expect(page.locator(f'#fleet-rows tr[data-ven-id="{ven_id}"]')).to_contain_text(
            "online", timeout=WAIT_MS)

        await page.get_by_label("Program (market context)").fill(PROGRAM)
        await page.get_by_label("Target VENs").select_option(ven_id)
        await page.get_by_label("Signal", exact=True).select_option("LOAD_DISPATCH/setpoint")
        await page.get_by_label("Value", exact=True).fill("40")
        await page.get_by_label("Starts in (minutes)").fill("0.05")
        await page.get_by_label("Duration (minutes)").fill("5")
        await page.get_by_role("button", name="Create event").click()
        await expect(page.locator("#message")).to_contain_text("created", timeout=WAIT_MS)

        event_id = await page.locator("#event-rows tr[data-event-id]").first.get_attribute(
            "data-event-id")
        assert event_id
        row = page.locator(f'#event-rows tr[data-event-id="{event_id}"]')
        ven = row.locator(f'li[data-ven-id="{ven_id}"]')
        await expect(ven).to_have_attribute("data-state", "acknowledged", timeout=WAIT_MS)
        await expect(ven).to_contain_text("agg-1: acknowledged, optIn")

        chart = page.locator(f'figure[data-chart="event:{event_id}"]')
        await expect(chart.locator("polyline.requested")).not_to_have_attribute(
            "data-points", "0", timeout=WAIT_MS)
        delivered = chart.locator("polyline.delivered")
        await expect(delivered).not_to_have_attribute("data-points", "0", timeout=WAIT_MS)
        seen = await delivered.get_attribute("data-points")
        # the VEN's telemetry keeps arriving: the chart gains points as it does
        await expect(delivered).not_to_have_attribute("data-points", str(seen), timeout=WAIT_MS)
        await expect(chart.locator("figcaption")).to_contain_text("requested 40.0 kW")

        await row.get_by_role("button", name=f"Modify event {event_id}").click()
        await expect(page.locator("#form-h")).to_have_text(f"Modify event {event_id}")
        await page.get_by_label("Value", exact=True).fill("30")
        await page.get_by_label("Modification reason").fill("less is needed")
        await page.get_by_role("button", name="Save modification").click()
        await expect(row).to_contain_text("modification 1", timeout=WAIT_MS)
        await expect(ven).to_have_attribute("data-state", "acknowledged", timeout=WAIT_MS)
        await expect(chart.locator("figcaption")).to_contain_text("requested 30.0 kW",
                                                                  timeout=WAIT_MS)

        await row.get_by_role("button", name=f"Cancel event {event_id}").click()
        await expect(row.locator("td .state").first).to_have_text("cancelled", timeout=WAIT_MS)
        await expect(row).to_contain_text("modification 2")
        await expect(row.get_by_role("button")).to_have_count(0)

        assert await page.evaluate("window.sameDocument") is True
        assert errors == []


async def test_with_a_token_the_page_asks_for_it_and_then_shows_the_fleet(
        browser: Browser) -> None:
    async with running_vtn(**FAST) as vtn, running_fleet([ven_spec(vtn.oadr_url, "agg-1")]):
        (ven_id,) = await registered(vtn, 1)
        vtn.deps.api_token = "s3cret"
        page, errors = await open_dashboard(browser, vtn.url)
        token = page.get_by_label("Operator API token")
        await expect(token).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator(f'tr[data-ven-id="{ven_id}"]')).to_have_count(0)
        await token.fill("s3cret")
        await page.get_by_role("button", name="Use token").click()
        await expect(page.locator(f'tr[data-ven-id="{ven_id}"]')).to_have_count(
            1, timeout=WAIT_MS)
        assert await page.evaluate("sessionStorage.getItem('adrgate-token')") == "s3cret"
        # the 401s before the token was given are the browser's network log, not our errors
        assert [e for e in errors if "401" not in e] == []
