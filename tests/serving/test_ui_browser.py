"""The web page in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`)
driven by selenium against a real local Ray Serve app (tiny model, CPU, auth on).

One scenario, step by step (each step's assertion names it): sign in, create a stream from the
form, its tile shows moving non-blank frames (screenshot pixels at two times), the KV chart
draws, another tenant's stream is not shown, steer, cancel, the MP4 link downloads with the
cookie, 30 streams paginate with one feed for the page, /docs and /redoc render offline, sign
out; all along, no request leaves for another host. Screenshots land in $QVG_TEST_ARTIFACTS
(default out/ui-browser/)."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from conftest import ACME, GLOBEX, create

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip(
        "headless Chromium not installed (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed ([test])")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1400")  # fmt: skip
# Demo settings: low watermarks, so the ladder quantizes early and the chart shows QVG pages.
SCHEDULER = {"high_watermark": 0.5, "low_watermark": 0.4, "sink_pages": 1, "window_pages": 2}
ARTIFACTS = Path(os.environ.get("QVG_TEST_ARTIFACTS", Path(__file__).parents[2] / "out"))
CHART_POINTS = "return document.getElementById('kv-chart').dataset.points"
SERIES = (
    "return [...document.querySelectorAll('#kv-chart [data-series]')].map(e => e.dataset.series)"
)
SWAGGER_TITLE = (
    "const t = document.querySelector('.swagger-ui .info .title'); return t?.textContent"
)
TILES_DRAWN = """
const split = {inView: [], outOfView: []};
for (const t of document.querySelectorAll('.tile')) {
  const r = t.querySelector('canvas').getBoundingClientRect();
  const seen = r.bottom > 0 && r.top < innerHeight;
  split[seen ? 'inView' : 'outOfView'].push(+t.dataset.drawn > 0);
}
return split;"""
SCENES = ("camera panning left over the cat", "camera zooming in over the rocket",
          "camera panning up over the coffee")  # fmt: skip
LOCAL_SCHEMES = ("data", "blob", "about", "chrome", "chrome-untrusted", "devtools")  # own pages


@pytest.fixture(scope="module")
def base(serving):
    # 96 MiB: admission projects each stream at its full length; the 240-frame stream and the
    # three 96-frame ones (~64 MB projected) run at once
    engine = {"kv_cache_memory_bytes": 96 << 20}
    return serving.deploy("ui", "/", scheduler=SCHEDULER, engine=engine)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class Page:
    """The browser on the page, with its network log gathered as it goes."""

    def __init__(self, driver, base: str, out: Path) -> None:
        self.d, self.base, self.out = driver, base, out
        self.sent: dict[str, str] = {}  # request id -> URL
        self.blocked: dict[str, str] = {}  # request id -> why the browser blocked it

    def wait(self, what: str, cond, timeout: float = 60):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(lambda d: cond())
        except Exception:
            self.shot(f"failed-{what.replace(' ', '-')}")
            raise AssertionError(f"step {what!r}: not reached in {timeout} s") from None

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def find(self, css: str):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def shot(self, name: str) -> Path:
        path = self.out / f"{name}.png"
        self.d.save_screenshot(str(path))
        return path

    def drain_network(self) -> list[str]:
        """URLs the page sent so far; a request the CSP blocked never left the browser."""
        for entry in self.d.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            params = msg.get("params", {})
            if msg["method"] == "Network.requestWillBeSent":
                self.sent[params["requestId"]] = params["request"]["url"]
            elif msg["method"] == "Network.loadingFailed" and params.get("blockedReason"):
                self.blocked[params["requestId"]] = params["blockedReason"]
        return [u for r, u in self.sent.items() if r not in self.blocked]

    def tile(self, sid: str):
        return self.find(f'.tile[data-id="{sid}"]')

    def tile_attr(self, sid: str, name: str):
        return self.js(
            "const t = document.querySelector(`.tile[data-id='${arguments[0]}']`);"
            "return t ? t.dataset[arguments[1]] : null;",
            sid,
            name,
        )


def canvas_pixels(page: Page, sid: str):
    from PIL import Image

    png = page.tile(sid).find_element(By.CSS_SELECTOR, "canvas").screenshot_as_png
    return Image.open(io.BytesIO(png)).convert("RGB")


def spread(img) -> float:
    """Pixel standard deviation: ~0 for a blank (one-colour) canvas."""
    from PIL import ImageStat

    return max(ImageStat.Stat(img).stddev)


def mean_abs_diff(a, b) -> float:
    from PIL import ImageChops, ImageStat

    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def test_ui_in_chromium(base, browser):
    out = ARTIFACTS / "ui-browser"
    out.mkdir(parents=True, exist_ok=True)
    page = Page(browser, base, out)
    foreign = create(base, headers=GLOBEX, frames=3).json()["id"]

    # sign in: the key goes in a POST body and comes back as an HttpOnly SameSite cookie
    browser.get(f"{base}/ui")
    page.wait("sign-in form", lambda: page.find("#sign-in").is_displayed())
    page.find("#key").send_keys("key-acme")
    page.find("#sign-in-form button").click()
    page.wait("signed in", lambda: page.find("#who").text == "tenant acme")
    cookie = next(c for c in browser.get_cookies() if c["name"] == "qvg_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert page.js("return document.cookie") == "", "the session cookie is readable by scripts"

    # create from the form (vocabulary chips come from /v1/model)
    page.wait(
        "vocabulary", lambda: len(page.d.find_elements(By.CSS_SELECTOR, "#vocabulary button"))
    )
    page.find("#prompt").send_keys("camera panning right over the astronaut")
    page.js("document.getElementById('frames').value = 240")
    page.find("#create").click()
    page.wait("tile appears", lambda: page.js("return document.querySelector('.tile')"))
    sid = page.find(".tile").get_attribute("data-id")
    page.js("arguments[0].scrollIntoView({block: 'center'})", page.tile(sid))  # in view: streams
    latency = first_frame_latency(page, base, sid)

    # moving, non-blank frames: the canvas at two times
    page.wait("3 frames drawn", lambda: int(page.tile_attr(sid, "drawn") or 0) >= 3, 120)
    first, i1 = canvas_pixels(page, sid), int(page.tile_attr(sid, "lastFrame"))
    page.wait("6 more frames", lambda: int(page.tile_attr(sid, "lastFrame")) >= i1 + 6, 120)
    second = canvas_pixels(page, sid)
    first.save(out / "tile-t1.png")
    second.save(out / "tile-t2.png")
    assert spread(first) > 8 and spread(second) > 8, "tile frames are blank"
    assert mean_abs_diff(first, second) > 0.5, "tile frames do not move"

    # the KV chart: held bytes by format, the BF16 line and the capacity line
    page.wait("chart points", lambda: int(page.js(CHART_POINTS) or 0) >= 3, 60)
    series = page.js(SERIES)
    assert {"bf16-equivalent", "capacity"} <= set(series), series
    assert any(s.startswith("held:") for s in series), series
    page.wait("QVG pages", lambda: "held:qvg-int2" in page.js(SERIES), 120)
    assert int(page.find("#kv-facts").get_attribute("data-resident")) >= 1
    more = [create(base, frames=96, seed=i, prompt=p).json()["id"] for i, p in enumerate(SCENES)]
    page.wait(
        "more tiles drawn", lambda: all(int(page.tile_attr(m, "drawn") or 0) > 2 for m in more)
    )
    page.js("window.scrollTo(0, 0)")
    page.shot("ui")  # docs/ui.png is this screenshot
    for m in more:
        requests.delete(f"{base}/v1/streams/{m}", headers=ACME, timeout=30)

    # tenancy: globex's stream is not on acme's page
    ids = page.js("return [...document.querySelectorAll('.tile')].map(t => t.dataset.id)")
    assert sid in ids and foreign not in ids, (sid, foreign, ids)

    # steer, then cancel, then the MP4 downloads with the cookie alone
    steer = page.tile(sid).find_element(By.CSS_SELECTOR, ".new-prompt")
    steer.send_keys("a yellow star rotating on checkerboard")
    page.tile(sid).find_element(By.CSS_SELECTOR, ".steer button").click()
    page.wait("prompt steered", lambda: "yellow star" in page.tile(sid).text)
    page.tile(sid).find_element(By.CSS_SELECTOR, ".cancel").click()
    page.wait("cancelled", lambda: page.tile_attr(sid, "state") == "cancelled")
    st = requests.get(f"{base}/v1/streams/{sid}", headers=ACME, timeout=10).json()
    assert st["state"] == "cancelled" and st["pages"] == {}, st
    link = page.tile(sid).find_element(By.CSS_SELECTOR, ".mp4")
    page.wait("mp4 link", lambda: "disabled" not in link.get_attribute("class"))
    mp4 = requests.get(link.get_attribute("href"), cookies={"qvg_session": cookie["value"]})
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"

    check_pagination(page, base)
    page.drain_network()
    check_offline_docs(page, base)
    check_sign_out(page, base, cookie["value"])
    check_no_foreign_requests(page, base)
    print(f"\nUI: first frame drawn {latency:.2f} s after it was available (upper bound)")
    assert latency < 2.0, f"first frame took {latency:.2f} s to show"


def first_frame_latency(page: Page, base: str, sid: str) -> float:
    """Seconds from the stream's first frames being served (bounded below by the last status
    poll before they appeared) to the tile drawing its first frame: an upper bound."""
    before = time.time()
    while True:
        st = requests.get(f"{base}/v1/streams/{sid}", headers=ACME, timeout=10).json()
        if st["frames_done"] > 0:
            break
        before = time.time()
        time.sleep(0.05)
    page.wait("first frame drawn", lambda: page.tile_attr(sid, "firstDrawnAt"), 30)
    return int(page.tile_attr(sid, "firstDrawnAt")) / 1000 - before


def check_pagination(page: Page, base: str) -> None:
    prompt = "a yellow star rotating on checkerboard"
    made = [create(base, frames=3, priority="low", prompt=prompt) for _ in range(30)]
    assert all(r.status_code == 201 for r in made), [r.text for r in made if r.status_code != 201]
    page.wait("3 pages", lambda: page.find("#page-label").text == "page 1 / 3", 30)
    assert len(page.d.find_elements(By.CSS_SELECTOR, ".tile")) == 12
    page.wait("tiles in view drawn", lambda: all(page.js(TILES_DRAWN)["inView"]), 180)
    drawn = page.js(TILES_DRAWN)
    assert drawn["outOfView"] and not any(drawn["outOfView"]), f"off-screen tiles streamed: {drawn}"
    page.shot("ui-page1")
    feeds = [u for u in page.drain_network() if urlsplit(u).path.endswith("/v1/feed")]
    assert feeds and all(len(parse_qs(urlsplit(u).query)["id"]) <= 12 for u in feeds), feeds
    page.find("#next").click()
    page.wait("page 2", lambda: page.find("#page-label").text == "page 2 / 3")
    assert len(page.d.find_elements(By.CSS_SELECTOR, ".tile")) == 12


def check_offline_docs(page: Page, base: str) -> None:
    page.d.get(f"{base}/docs")
    page.wait(
        "swagger ui",
        lambda: "qvg-serve" in (page.js(SWAGGER_TITLE) or ""),
    )
    page.shot("docs")
    page.d.get(f"{base}/redoc")
    page.wait("redoc", lambda: page.js("return document.querySelector('h1') !== null"))
    page.shot("redoc")


def check_sign_out(page: Page, base: str, token: str) -> None:
    page.d.get(f"{base}/ui/")
    page.wait("signed in again", lambda: page.find("#who").text == "tenant acme")
    page.find("#sign-out").click()
    page.wait("signed out", lambda: page.find("#sign-in").is_displayed())
    assert not [c for c in page.d.get_cookies() if c["name"] == "qvg_session"]


def check_no_foreign_requests(page: Page, base: str) -> None:
    host = urlsplit(base).netloc
    urls = page.drain_network()
    assert any(urlsplit(u).path.endswith("/v1/feed") for u in urls)
    foreign = [u for u in urls if urlsplit(u).scheme not in LOCAL_SCHEMES
               and urlsplit(u).netloc != host]  # fmt: skip
    assert not foreign, f"the page asked other hosts: {foreign[:5]}"
    assert not [u for u in urls if "key-acme" in u], "the API key appeared in a URL"
    csp = requests.get(f"{base}/ui/", timeout=10).headers["content-security-policy"]
    assert "default-src 'self'" in csp
