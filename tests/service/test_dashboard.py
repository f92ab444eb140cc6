"""The dashboard (``/ui``) in a real browser: Debian's headless Chromium, driven through
chromedriver by selenium, against a lab served over loopback (the API under uvicorn and a
worker on the FakeBackend test double). The page updates from the lab's events without a
reload, runs nothing a design wrote, asks nothing of another origin, and fits a phone."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.client.conftest import KEYS, OPS, LiveLab, StartLab, sim_lab, start_lab  # noqa: F401
from tests.fakes import FakeBackend
from tests.helpers import REPO

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
#: Where the test run leaves the screenshots the docs show.
SHOTS = REPO / "docs" / "img"
#: A design that logs markup and script: the page must show it as text and run none of it.
HOSTILE = (
    b"# a design\nDesign = None\n"
    b'# ECHO:<script>window.pwned = "script"</script>\n'
    b"# ECHO:<img src=x onerror=\"window.pwned = 'img'\">\n"
    b"# FAIL_BUILD <b>bold?</b>\n"
)

if CHROMIUM is None or CHROMEDRIVER is None:
    if os.environ.get("CI"):
        raise RuntimeError("chromium and chromium-driver are not installed (make system)")
    pytest.skip("chromium or chromedriver not installed", allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium, its network log kept (to see every request the page makes)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,900", "--disable-gpu"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def until(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.1)


def card(driver: Any, fpga_id: int) -> dict[str, str]:
    """A board's card as the page shows it: its data attributes and text."""
    found: dict[str, str] | None = driver.execute_script(
        "const c = document.getElementById('board-' + arguments[0]);"
        "return c && {state: c.dataset.state, health: c.dataset.health, text: c.textContent};",
        fpga_id,
    )
    return found or {}


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for (Chrome's network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def submit(lab: LiveLab, fpga_id: int, design: bytes, name: str = "d.py") -> dict[str, Any]:
    with httpx.Client(base_url=lab.url, trust_env=False) as c:
        r = c.post(f"/fpga/{fpga_id}/submit", files={"file": (name, design)})
        assert r.status_code == 202, r.text
        return r.json()  # type: ignore[no-any-return]


def test_the_grid_follows_the_lab_without_a_reload(
    start_lab: StartLab,  # noqa: F811  (the fixture imported above)
    backend: FakeBackend,
    browser: Any,
) -> None:
    """Ten boards on the page, each with its platform and tags; a design submitted through
    the API turns board 3 to building and then reserved on the page, without a reload;
    the page asked nothing of another origin. The test run leaves a screenshot of the
    grid in docs/img/."""
    lab = start_lab(inventory={3: ("sim", ("dsp", "big")), 4: ("ulx3s", ())})
    browser.get(f"{lab.url}/ui")
    until(lambda: len(browser.find_elements("css selector", ".board")) == 10, what="10 boards")
    until(lambda: browser.find_element("id", "live").text == "live", what="the live stream")
    browser.execute_script("window.notReloaded = true")
    backend.hold.add("program")
    submit(lab, 3, b"# a design\nDesign = None\n")
    until(lambda: card(browser, 3).get("state") in ("building", "programming"), what="building")
    backend.resume.set()
    until(lambda: card(browser, 3).get("state") == "reserved", what="reserved")
    assert "held by anonymous" in card(browser, 3)["text"]
    assert "sim · big, dsp" in card(browser, 3)["text"]
    assert "ulx3s" in card(browser, 4)["text"] and "sim" in card(browser, 5)["text"]
    assert browser.execute_script("return window.notReloaded") is True
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "dashboard-grid.png"))
    foreign = [u for u in requested_urls(browser) if not u.startswith(lab.url)]
    assert foreign == []


def test_hostile_text_is_shown_never_run(
    start_lab: StartLab,  # noqa: F811  (the fixture imported above)
    browser: Any,
) -> None:
    """A failed build whose log and error carry <script> and <img onerror>: the failure is
    listed and its job page shows the log as text; nothing of it runs."""
    lab = start_lab()
    browser.get(f"{lab.url}/ui")
    until(lambda: browser.find_element("id", "live").text == "live", what="the live stream")
    accepted = submit(lab, 5, HOSTILE)
    failure = until(lambda: browser.find_elements("css selector", "#failures a"), what="failure")
    failure[0].click()
    log = until(lambda: "ECHO" not in (t := browser.find_element("id", "log").text) and
                "<script>" in t and t, what="the log")  # fmt: skip
    assert "<img src=x onerror=\"window.pwned = 'img'\">" in log
    assert browser.execute_script("return window.pwned") is None
    assert browser.find_elements("css selector", "#log script, #log img, #failures img") == []
    assert accepted["job_id"] in browser.find_element("id", "job-title").text
    until(lambda: "ended" in browser.find_element("id", "log-state").text, what="the end")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "dashboard-job.png"))


def test_the_page_forbids_inline_script_and_fits_a_phone(
    start_lab: StartLab,  # noqa: F811  (the fixture imported above)
    browser: Any,
) -> None:
    """Its Content-Security-Policy allows scripts of this origin only, the HTML carries no
    inline script or handler, and at a phone's width nothing runs off the side."""
    lab = start_lab()
    with httpx.Client(base_url=lab.url, trust_env=False) as c:
        page = c.get("/ui")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "<script>" not in page.text and not re.search(r"\son[a-z]+\s*=", page.text)
    assert "<style" not in page.text and "style=" not in page.text
    browser.set_window_size(390, 844)
    browser.get(f"{lab.url}/ui")
    until(lambda: len(browser.find_elements("css selector", ".board")) == 10, what="boards")
    wide = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert wide <= 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "dashboard-phone.png"))


def test_a_lost_stream_is_shown_and_the_page_catches_up(
    start_lab: StartLab,  # noqa: F811  (the fixture imported above)
    backend: FakeBackend,
    browser: Any,
) -> None:
    """The API goes away: the page says the live stream is lost. It comes back (same
    address, same Redis): the page says so, and shows what changed meanwhile."""
    lab = start_lab()
    browser.get(f"{lab.url}/ui")
    until(lambda: browser.find_element("id", "live").text == "live", what="the live stream")
    port = lab.settings.port
    lab.stop()
    until(lambda: browser.find_element("id", "lost").is_displayed(), what="the lost banner")
    again = LiveLab(lab.settings, backend)
    again.settings = again.settings.model_copy(update={"port": port})
    try:
        again.start()
        submit(again, 4, b"# a design\nDesign = None\n")
        until(lambda: card(browser, 4).get("state") == "reserved", timeout=30, what="caught up")
        assert not browser.find_element("id", "lost").is_displayed()
        assert browser.find_element("id", "live").text == "live"
    finally:
        again.stop()


def test_an_admin_signs_in_and_puts_a_board_in_maintenance(
    start_lab: StartLab,  # noqa: F811  (the fixture imported above)
    browser: Any,
) -> None:
    """A keyed lab: the page asks for a key; an admin's key signs in (a cookie for reads),
    the maintenance button takes board 2 out of service and back; the key is in no URL
    the page requested."""
    lab = start_lab(api_keys=KEYS)
    browser.get(f"{lab.url}/ui")
    form = until(lambda: browser.find_element("id", "login").is_displayed(), what="sign-in")
    assert form
    browser.find_element("id", "login-key").send_keys(OPS)
    browser.find_element("css selector", "#login-form button").click()
    until(lambda: browser.find_element("id", "live").text == "live", what="the live stream")
    assert "ops (admin)" in browser.find_element("id", "who").text
    button = until(lambda: browser.find_elements("css selector", "#board-2 button"), what="button")
    button[0].click()
    until(lambda: card(browser, 2).get("health") == "maintenance", what="maintenance")
    with httpx.Client(base_url=lab.url, trust_env=False, headers={"X-API-Key": OPS}) as c:
        assert c.get("/fpga/2").json()["health"] == "maintenance"
    browser.find_element("css selector", "#board-2 button").click()
    until(lambda: card(browser, 2).get("health") != "maintenance", what="back online")
    assert not [u for u in requested_urls(browser) if OPS in u]
    cookies = {c["name"]: c for c in browser.get_cookies()}
    assert all(OPS not in c["value"] for c in cookies.values())
    assert any(c.get("httpOnly") for c in cookies.values())


def test_a_traced_runs_page_draws_its_waveform(
    sim_lab: LiveLab,  # noqa: F811  (the fixture imported above)
    browser: Any,
) -> None:
    """On the simulated lab (the SoC's own analyzer), the counter with its bug traced: the
    run's page lists its five bus transactions (the read's 6 among them), draws every
    signal, the design's probe included, and links the VCD; all from the lab's origin.
    The test run leaves a screenshot of it in docs/img/."""
    design = (REPO / "docs" / "examples" / "counter.py").read_bytes()
    with httpx.Client(base_url=sim_lab.url, trust_env=False, timeout=60) as c:
        r = c.post("/fpga/2/submit", files={"file": ("counter.py", design)})
        assert c.get(f"/fpga/2/jobs/{r.json()['job_id']}", params={"wait": 30}).json()[
            "status"] == "complete"  # fmt: skip
        user = 0x2000_0000
        ops = [{"op": 1, "address": user + 8, "data": [0]}]
        ops += [{"op": 1, "address": user, "data": [i]} for i in (1, 2, 3)]
        ops += [{"op": 2, "address": user + 4}]
        run = c.post("/fpga/2/run", json={"ops": ops, "trace": True}, params={"wait": 30})
        assert run.json()["result"]["data"] == [6], run.text
    job_id = run.json()["job_id"]
    browser.get(f"{sim_lab.url}/ui#job/2/{job_id}")
    rows = until(lambda: browser.find_elements("css selector", "#transactions tbody tr"),
                 timeout=30, what="the transactions")  # fmt: skip
    cells = [[td.text for td in row.find_elements("css selector", "td")] for row in rows]
    assert [c[1:] for c in cells] == [
        ["write", "0x2", "0x00000000", "ack"],
        ["write", "0x0", "0x00000001", "ack"],
        ["write", "0x0", "0x00000002", "ack"],
        ["write", "0x0", "0x00000003", "ack"],
        ["read", "0x1", "0x00000006", "ack"],
    ]
    assert all(c[0].endswith(" ns") for c in cells)
    names = [t.text for t in browser.find_elements("css selector", "#wave text.name")]
    assert "bus.dat_r" in names and "design.count" in names
    link = browser.find_element("id", "wave-file")
    assert link.get_attribute("href") == f"{sim_lab.url}/fpga/2/jobs/{job_id}/waveform"
    browser.execute_script("document.getElementById('waveform').scrollIntoView()")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "dashboard-trace.png"))
    foreign = [u for u in requested_urls(browser) if not u.startswith(sim_lab.url)]
    assert foreign == []
