"""The page and embed.js in a real headless Chromium, against the real app and the simulator.

Every test starts the daemon's app on a loopback port against a fresh
simulated campaign; one browser is shared by the module. Nothing is
downloaded: Playwright drives Debian's ``/usr/bin/chromium`` (``.ci/run``
installs it). Screenshots land in ``tests/artifacts/`` (gitignored);
``python -m tests.test_page docs/screenshot.png`` renders the README's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from sponsord.app import create_app
from sponsord.config import Config, DisplayConfig, PatreonConfig, Secret, Secrets, StateConfig
from sponsord.keys import HUB
from sponsord.simulator import Simulator

from .conftest import ACCESS_TOKEN, WEBHOOK_SECRET, with_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
WALL = "[data-sponsor-wall]"
LOAF = f"{WALL} .sw-loaf"  # Playwright's CSS engine pierces open shadow roots
GOAL = 20
XSS = "<img src=x onerror=alert(1)>"
JOIN_URL = "https://www.patreon.com/join/bunnyloaves"
#: Records every version the wall renders (embed.js stamps it on the host element).
RECORD_RENDERS = """
window.__renders = [];
new MutationObserver((records) => records.forEach((r) => window.__renders.push(r.target.dataset.version)))
  .observe(document.querySelector("[data-sponsor-wall]"), {attributeFilter: ["data-version"]});
"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def free_socket() -> socket.socket:
    """A listening-ready loopback socket on a free port, so URLs are known before the app exists."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def origin(sock: socket.socket) -> str:
    """``http://127.0.0.1:PORT`` of a bound socket."""
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) until ``predicate()`` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@dataclass
class Stack:
    """A running daemon app against a simulated campaign, plus a host page on two other origins.

    url: the daemon's public URL (serves ``/`` and ``/embed.js``).
    allowed_host: a host page's origin listed in ``allowed_origins``.
    refused_host: the same host page on an origin that is not listed.
    """

    sim: Simulator
    app: web.Application
    url: str
    allowed_host: str
    refused_host: str
    session: aiohttp.ClientSession

    async def supporters(self) -> dict[str, Any]:
        """The REST document, as the page should show it."""
        async with self.session.get(f"{self.url}/v1/supporters") as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body

    async def join(self, name: str) -> None:
        """A new patron pledges; Patreon's signed webhook tells the daemon."""
        member = self.sim.campaign.add_member(name)
        status = await self.sim.send_webhook(
            self.session, f"{self.url}/v1/webhooks/patreon", "members:pledge:create", member
        )
        assert status == 202


def host_page(api: str) -> str:
    """A third-party page embedding the wall with the documented snippet, and hostile CSS."""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Host</title>
<style>
  * {{ color: rgb(255, 0, 0) !important; font-size: 30px; }}
  li {{ display: inline; }} ul {{ display: flex; }} svg {{ width: 500px; }}
  button {{ background: rgb(0, 0, 255); }}
</style></head><body>
<h1>My static site</h1>
<button class="sw-loaf" id="host-button">host button</button>
<div data-sponsor-wall></div><script src="{api}/embed.js" defer></script>
</body></html>"""


@contextlib.asynccontextmanager
async def running_stack(
    make_config: Callable[..., Config], members: int = 12, seed: int = 7, goal: int = GOAL
) -> AsyncIterator[Stack]:
    """The simulator, the daemon app and the host page, all on real loopback ports."""
    sim = Simulator.with_members(members, seed=seed)
    sim_url = await sim.start()
    api_sock, allowed_sock, refused_sock = free_socket(), free_socket(), free_socket()
    url = origin(api_sock)
    config = with_server(make_config(sim_url), public_url=url, allowed_origins=(origin(allowed_sock),))
    config = replace(config, display=DisplayConfig(goal_count=goal, join_url=JOIN_URL))
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, api_sock).start()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=host_page(url), content_type="text/html")

    host = web.Application()
    host.router.add_get("/", page)
    host_runner = web.AppRunner(host, access_log=None)
    await host_runner.setup()
    await web.SockSite(host_runner, allowed_sock).start()
    await web.SockSite(host_runner, refused_sock).start()
    session = aiohttp.ClientSession()
    try:
        await until(lambda: app[HUB].snapshot is not None)
        yield Stack(sim, app, url, origin(allowed_sock), origin(refused_sock), session)
    finally:
        await session.close()
        await host_runner.cleanup()
        await runner.cleanup()
        await sim.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the whole module."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def stack(make_config: Callable[..., Config]) -> AsyncIterator[Stack]:
    """A fresh daemon + simulator + host page for one test."""
    async with running_stack(make_config) as s:
        yield s


@contextlib.asynccontextmanager
async def browsing(browser: Any, **options: Any) -> AsyncIterator[Any]:
    """A fresh browser context; an uncaught error in any of its pages fails the test."""
    ctx = await browser.new_context(**options)
    errors: list[str] = []
    ctx.on("weberror", lambda error: errors.append(str(error.error)))
    try:
        yield ctx
    finally:
        await ctx.close()
    assert errors == []


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Any) -> AsyncIterator[Any]:
    """A desktop browser context for one test."""
    async with browsing(browser, viewport={"width": 1100, "height": 800}) as ctx:
        yield ctx


async def open_page(ctx: Any, url: str, transport: str = "websocket") -> Any:
    """Open ``url`` and wait until the wall shows data received over ``transport``."""
    page = await ctx.new_page()
    await page.goto(url)
    await page.wait_for_selector(f"{WALL}[data-transport={transport}]", state="attached", timeout=15000)
    return page


async def loaf_names(page: Any) -> list[str]:
    """The names of the loaves, in order (each loaf's accessible text)."""
    names: list[str] = await page.locator(f"{LOAF} .sw-name").all_text_contents()
    return names


def shown_titles(doc: dict[str, Any]) -> list[str]:
    """What each loaf should be called for a REST document."""
    return ["Anonymous supporter" if s["title"] == "Anonymous" else s["title"] for s in doc["supporters"]]


def artifact(name: str) -> str:
    """Where a screenshot goes."""
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)


async def test_page_shows_one_named_loaf_per_supporter_and_the_goal(stack: Stack, context: Any) -> None:
    """The support page shows a loaf per supporter, named in order, empty spots and "N / 20"."""
    doc = await stack.supporters()
    page = await open_page(context, f"{stack.url}/")
    count = len(doc["supporters"])
    assert 0 < count < GOAL
    assert await loaf_names(page) == shown_titles(doc)
    assert await page.locator(f"{WALL} .sw-count").text_content() == f"{count} / {GOAL}"
    assert await page.locator(f"{WALL} .sw-slot").count() == GOAL - count
    assert await page.locator(f"{WALL} .sw-slot").first.get_attribute("href") == JOIN_URL
    grid = page.get_by_role("list", name="Supporters")
    assert await grid.count() == 1
    bar = page.get_by_role("progressbar")
    assert await bar.get_attribute("aria-valuenow") == str(count)
    assert await page.locator(f"{WALL} [role=status][aria-live=polite]").count() == 1
    # Keyboard: the first loaf takes focus and shows its name.
    first = page.locator(LOAF).first
    await first.focus()
    assert await first.evaluate("el => el.classList.contains('sw-show')")
    assert await page.get_by_role("button", name=shown_titles(doc)[0]).count() >= 1
    await page.screenshot(path=artifact("desktop.png"), full_page=True)


async def test_webhook_updates_the_page_live_without_reload(stack: Stack, context: Any) -> None:
    """A new pledge + signed webhook adds a highlighted, announced loaf in place, no reload."""
    page = await open_page(context, f"{stack.url}/")
    before = len(await loaf_names(page))
    await page.evaluate("window.__noReload = true")
    first = await page.locator(LOAF).first.element_handle()
    await stack.join("Newcomer Bun")
    newcomer = page.locator(LOAF, has_text="Newcomer Bun")
    await newcomer.wait_for(timeout=5000)
    assert await page.evaluate("window.__noReload") is True
    assert await first.evaluate("el => el.isConnected")  # the old loaves were kept, not redrawn
    assert len(await loaf_names(page)) == before + 1
    assert await page.locator(f"{WALL} .sw-count").text_content() == f"{before + 1} / {GOAL}"
    assert await newcomer.evaluate("el => el.parentElement.classList.contains('sw-new')")
    status = page.locator(f"{WALL} [role=status]")
    assert "Newcomer Bun joined" in (await status.text_content() or "")


async def test_longpoll_when_websocket_is_missing(stack: Stack, context: Any) -> None:
    """Without window.WebSocket the wall long-polls, shows the data and follows changes."""
    await context.add_init_script("delete window.WebSocket;")
    page = await open_page(context, f"{stack.url}/", transport="longpoll")
    assert await loaf_names(page) == shown_titles(await stack.supporters())
    await stack.join("Polling Pip")
    await page.locator(LOAF, has_text="Polling Pip").wait_for(timeout=5000)
    assert await loaf_names(page) == shown_titles(await stack.supporters())


async def test_rest_fallback_when_websocket_and_longpoll_are_blocked(stack: Stack, context: Any) -> None:
    """With the socket killed by a proxy and long-polls blocked, one plain GET shows the data."""
    await context.route_web_socket("**/v1/supporters/websocket", lambda ws: ws.close())
    await context.route("**/v1/supporters/poll*", lambda route: route.abort())
    page = await open_page(context, f"{stack.url}/", transport="rest")
    doc = await stack.supporters()
    assert await loaf_names(page) == shown_titles(doc)
    assert await page.locator(f"{WALL} .sw-count").text_content() == f"{len(doc['supporters'])} / {GOAL}"


async def test_closed_socket_reconnects_and_a_visible_tab_does_not_wait(stack: Stack, context: Any) -> None:
    """A socket the server closes is reopened after backoff, at once when the tab becomes visible."""
    sockets: list[Any] = []

    def proxy(ws: Any) -> None:
        ws.connect_to_server()
        sockets.append(ws)

    await context.route_web_socket("**/v1/supporters/websocket", proxy)
    page = await context.new_page()
    await page.clock.install()
    await page.clock.pause_at(1_900_000_000_000)  # timers (the backoff) only run when told
    await page.goto(f"{stack.url}/")
    await page.wait_for_selector(f"{WALL}[data-transport=websocket]", state="attached")
    await sockets[0].close(code=1001, reason="restart")
    await asyncio.sleep(0.3)
    assert len(sockets) == 1  # waiting out its backoff
    await page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    await until(lambda: len(sockets) == 2, timeout=5)
    await stack.join("Back Again")
    await page.locator(LOAF, has_text="Back Again").wait_for(timeout=5000)
    await sockets[1].close(code=1001, reason="restart")
    await page.clock.run_for(1000)  # the first retry waits random(0, 1 s)
    await until(lambda: len(sockets) == 3, timeout=5)


async def test_silent_dead_socket_is_caught_by_the_watchdog(stack: Stack, context: Any) -> None:
    """A socket that goes quiet for 60 s is checked; a missed change is shown and the socket replaced."""
    doc = await stack.supporters()
    frame = json.dumps({"type": "full_state", "data": doc})
    sockets: list[Any] = []

    def dead_after_first_frame(ws: Any) -> None:
        sockets.append(ws)
        ws.send(frame)  # and then nothing, like a connection dropped by a NAT

    await context.route_web_socket("**/v1/supporters/websocket", dead_after_first_frame)
    page = await context.new_page()
    await page.clock.install()
    await page.goto(f"{stack.url}/")
    await page.wait_for_selector(f"{WALL}[data-transport=websocket]", state="attached")
    await stack.join("Missed Mo")
    await until(lambda: stack.app[HUB].snapshot.version > doc["meta"]["version"])  # type: ignore[union-attr]
    await asyncio.sleep(0.2)
    assert await page.locator(LOAF, has_text="Missed Mo").count() == 0
    await page.clock.fast_forward(61_000)
    await page.locator(LOAF, has_text="Missed Mo").wait_for(timeout=5000)
    await until(lambda: len(sockets) == 2, timeout=5)


async def test_frames_that_are_not_newer_are_ignored(stack: Stack, context: Any) -> None:
    """A frame whose version is not newer than the one shown changes nothing."""

    def state(version: int, titles: list[str]) -> str:
        meta = {"version": version, "updated_at": "2026-12-03T15:00:00Z"}
        data = {"supporters": [{"title": t} for t in titles], "goal_count": 5, "meta": meta}
        return json.dumps({"type": "full_state", "data": data})

    sockets: list[Any] = []
    await context.route_web_socket("**/v1/supporters/websocket", lambda ws: sockets.append(ws))
    page = await context.new_page()
    await page.goto(f"{stack.url}/")
    await until(lambda: len(sockets) == 1)
    await page.evaluate(RECORD_RENDERS)
    sockets[0].send(state(5, ["Ada", "Ben"]))
    sockets[0].send(state(4, ["Old Olga"]))
    sockets[0].send(state(5, ["Same Sam"]))
    sockets[0].send(state(6, ["Ada", "Ben", "Cy"]))
    await page.locator(LOAF, has_text="Cy").wait_for(timeout=5000)
    assert await page.evaluate("window.__renders") == ["5", "6"]
    assert await loaf_names(page) == ["Ada", "Ben", "Cy"]
    assert await page.locator(f"{WALL} .sw-count").text_content() == "3 / 5"


@pytest.mark.parametrize(("width", "height"), [(375, 812), (320, 568)])
async def test_phone_viewport_has_no_horizontal_scroll_and_tap_shows_names(
    stack: Stack, browser: Any, width: int, height: int
) -> None:
    """On a phone nothing scrolls sideways, and tapping a loaf shows its name inside the screen."""
    phone = {"viewport": {"width": width, "height": height}, "is_mobile": True, "has_touch": True}
    async with browsing(browser, device_scale_factor=2, **phone) as ctx:
        page = await open_page(ctx, f"{stack.url}/")
        scroll = "[document.documentElement.scrollWidth, window.innerWidth]"
        assert await page.evaluate(scroll) == [width, width]
        last = page.locator(LOAF).last
        await last.tap()
        assert await last.evaluate("el => el.classList.contains('sw-show')")
        name = await last.locator(".sw-name").bounding_box()
        assert name is not None and name["width"] > 20
        assert name["x"] >= 0 and name["x"] + name["width"] <= width
        assert await page.evaluate(scroll) == [width, width]
        await page.screenshot(path=artifact(f"mobile-{width}.png"), full_page=True)


async def test_dark_mode_and_reduced_motion(stack: Stack, browser: Any) -> None:
    """Dark when the visitor prefers it; with reduced motion a new loaf is marked without animating."""
    options = {"color_scheme": "dark", "reduced_motion": "reduce"}
    async with browsing(browser, viewport={"width": 1100, "height": 800}, **options) as ctx:
        page = await open_page(ctx, f"{stack.url}/")
        background = await page.locator(f"{WALL} .sw").evaluate("el => getComputedStyle(el).backgroundColor")
        red, green, blue = (int(c) for c in background[background.index("(") + 1 : -1].split(",")[:3])
        assert red + green + blue < 200
        await stack.join("Quiet Quinn")
        newcomer = page.locator(LOAF, has_text="Quiet Quinn")
        await newcomer.wait_for(timeout=5000)
        assert await newcomer.evaluate("el => el.parentElement.classList.contains('sw-new')")
        assert await newcomer.evaluate("el => getComputedStyle(el).animationName") == "none"
        await page.screenshot(path=artifact("dark.png"), full_page=True)


async def test_embed_works_cross_origin_when_allowed_and_is_isolated(stack: Stack, context: Any) -> None:
    """The one-line snippet on an allowed origin goes live; host and wall styles stay apart."""
    page = await open_page(context, f"{stack.allowed_host}/")
    assert await loaf_names(page) == shown_titles(await stack.supporters())
    loaf_color = await page.locator(LOAF).first.evaluate("el => getComputedStyle(el).backgroundColor")
    assert loaf_color != "rgb(0, 0, 255)"  # the host's button rule does not reach in
    host_button = await page.locator("#host-button").evaluate(
        "el => [getComputedStyle(el).display, getComputedStyle(el).transform]"
    )
    assert host_button == ["inline-block", "none"]  # and the wall's .sw-loaf rule does not leak out
    width = await page.locator(f"{WALL} .sw-art").first.evaluate("el => el.getBoundingClientRect().width")
    assert width < 200
    await stack.join("Crossing Clover")
    await page.locator(LOAF, has_text="Crossing Clover").wait_for(timeout=5000)


async def test_embed_is_refused_for_an_origin_not_allowed(stack: Stack, context: Any) -> None:
    """On an origin outside allowed_origins, every transport is refused and a friendly message shows."""
    page = await open_page(context, f"{stack.refused_host}/", transport="error")
    message = page.locator(f"{WALL} .sw-msg")
    assert "could not be loaded" in (await message.text_content() or "")
    assert await page.locator(LOAF).count() == 0
    assert await message.get_by_role("link").get_attribute("href") == JOIN_URL


async def test_supporter_name_is_shown_as_text(stack: Stack, context: Any) -> None:
    """A supporter named like an HTML tag is shown literally; nothing runs."""
    dialogs: list[str] = []
    await stack.join(XSS)
    await until(lambda: any(s.get("title") == XSS for s in stack.app[HUB].snapshot.supporters))  # type: ignore[union-attr]
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await page.goto(f"{stack.url}/")
    await page.locator(LOAF, has_text=XSS).wait_for(timeout=10000)
    assert await page.locator(f"{WALL} img").count() == 0
    await asyncio.sleep(0.3)
    assert dialogs == []


async def save_readme_screenshot(path: Path) -> None:
    """Render the README's screenshot: a demo-sized campaign, one name shown, one new loaf."""
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as state:

        def make_config(api_base: str) -> Config:
            return Config(
                patreon=PatreonConfig(api_base=api_base, campaign_id="725055", webhook_cooldown=0.1),
                state=StateConfig(dir=Path(state)),
                secrets=Secrets(access_token=Secret(ACCESS_TOKEN), webhook_secret=Secret(WEBHOOK_SECRET)),
                path="<screenshot>",
            )

        async with running_stack(make_config, members=30, seed=4, goal=40) as s, async_playwright() as pw:
            chromium = await pw.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            ctx = await chromium.new_context(viewport={"width": 960, "height": 640})
            page = await open_page(ctx, f"{s.url}/")
            await s.join("Hazel Okafor")
            await page.locator(LOAF, has_text="Hazel Okafor").wait_for()
            await page.locator(LOAF).nth(12).hover()
            await asyncio.sleep(1.0)
            await page.locator(WALL).screenshot(path=str(path))
            await chromium.close()


if __name__ == "__main__":
    asyncio.run(save_readme_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png")))
