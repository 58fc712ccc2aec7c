"""The web app in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

A person's session: pick an example, click the object, draw a box, undo, paint a ground truth
in the Paint tab, run an attack and see the four result panels with their IoUs, then start a
long attack and cancel it. The app runs in a thread on 127.0.0.1 with the tiny test engines.

Skipped (with the reason) when Playwright or Chromium is not installed. Also a script: it
takes the README screenshot with the real embedded models:
    python tests/test_app_browser.py --screenshot docs/images/app.png
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("SAMDEMO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])


def wait_text(page, selector: str, text: str, timeout: float = 120) -> str:
    """Wait until the element's text contains ``text``; returns the text."""
    try:
        page.wait_for_function("([sel, text]) => { const e = document.querySelector(sel); "
                               "return e && e.innerText.includes(text); }", arg=[selector, text],
                               timeout=timeout * 1000)
    except Exception:
        current = page.locator(selector).inner_text() if page.locator(selector).count() else "(missing)"
        raise AssertionError(f"{selector} never showed {text!r} in {timeout} s; it shows {current!r}") from None
    return page.locator(selector).inner_text()


def click_image(page, selector: str, fx: float, fy: float) -> None:
    """Click the displayed image of ``selector`` at a fraction of its width and height."""
    image = page.locator(f"{selector} img").first
    box = image.bounding_box()
    image.click(position={"x": box["width"] * fx, "y": box["height"] * fy})


def run_session(page, url: str, steps: int = 2, paint: bool = True) -> dict:
    """A whole user session (painting a ground truth or not); returns what it saw."""
    seen = {}
    page.goto(url)
    page.wait_for_selector("#canvas", timeout=120_000)
    wait_text(page, "#model-info", "parameters", 120)

    page.locator("#examples button[aria-label='Thumbnail 1 of 8']").click()
    wait_text(page, "#status", "Loaded example", 120)
    click_image(page, "#canvas", 0.619, 0.396)  # the centre of the white blob of scene 0, image pixel (158, 101)
    status = wait_text(page, "#status", "Clean mask")
    seen["first_click"] = re.search(r"positive point at \((\d+), (\d+)\)", status).groups()

    page.get_by_label("box (2 clicks)").check()
    click_image(page, "#canvas", 0.35, 0.25)
    wait_text(page, "#status", "opposite corner")
    click_image(page, "#canvas", 0.7, 0.65)
    seen["box"] = wait_text(page, "#status", "Box set")
    page.locator("#undo").click()
    wait_text(page, "#status", "Undid")
    page.locator("#undo").click()
    seen["after_undo"] = wait_text(page, "#status", "Prompts: 1 positive point.")

    if not paint:
        page.get_by_label("positive point").check()
        return run_attack(page, steps, seen)
    # mask mode opens the Paint tab; paint the blob and use it as ground truth
    page.get_by_label("mask (paint)").check()
    page.wait_for_selector("#editor canvas", state="visible", timeout=120_000)
    canvas = page.locator("#editor canvas").first
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.35)
    page.mouse.down()
    for i in range(12):
        page.mouse.move(box["x"] + box["width"] * (0.45 + 0.01 * i), box["y"] + box["height"] * (0.35 + 0.01 * i),
                        steps=2)
    page.mouse.up()
    time.sleep(0.5)
    page.locator("#paint-gt").click()
    seen["paint"] = wait_text(page, "#status", "ground truth")
    page.get_by_label("positive point").check()
    page.get_by_role("tab", name="Click prompts").click()
    return run_attack(page, steps, seen)


def run_attack(page, steps: int, seen: dict) -> dict:
    page.locator("#steps input[type='number']").fill(str(steps))
    page.locator("#steps input[type='number']").press("Enter")
    page.locator("#run").click()
    seen["timings"] = wait_text(page, "#timings", "Timings", 180)
    seen["panels"] = {}
    for key in ("orig-clean", "orig-adv", "rob-clean", "rob-adv"):
        panel = page.locator(f"#panel-{key}")
        panel.locator("img").first.wait_for(state="visible", timeout=120_000)
        seen["panels"][key] = panel.locator("label").first.inner_text()
    seen["table"] = page.locator("#results-table").inner_text()
    seen["download"] = page.locator("#adv-file").inner_text()
    return seen


def cancel_long_attack(page) -> str:
    page.locator("#steps input[type='number']").fill("100")
    page.locator("#steps input[type='number']").press("Enter")
    page.locator("#run").click()
    wait_text(page, "#timings", "/100 steps", 60)  # the progress bar of the running attack
    page.locator("#cancel").click()
    # "Cancelling..." from the button, then "Attack cancelled..." from the attack, whichever is seen
    return wait_text(page, "#timings", "ancel", 120)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    try:
        from test_app import tiny_lab, write_tiny_adapters
    except ImportError:
        from tests.test_app import tiny_lab, write_tiny_adapters
    import app

    import torch

    lab = tiny_lab(write_tiny_adapters(tmp_path_factory.mktemp("checkpoints")))
    engine = lab.manager.engine("sam-small")
    embed = engine.embed

    def slow_embed(images):  # slow attack steps (the tiny model's take ~10 ms), so that there is time to cancel
        if torch.is_grad_enabled():  # 100 steps: a minute, enough for a click to arrive on a loaded machine
            time.sleep(0.6)
        return embed(images)

    engine.embed = slow_embed
    demo = app.build_demo(lab)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            css=app.CSS)
    yield url
    demo.close()


def test_a_user_session_in_chromium(app_url, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed "
                                         "(pip install playwright; the browser is Debian's chromium)")
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)  # generous: CI machines have 2 busy cores
        try:
            seen = run_session(page, app_url)
            page.screenshot(path=str(tmp_path / "session.png"), full_page=True)
            x, y = map(int, seen["first_click"])
            assert abs(x - 158) <= 2 and abs(y - 101) <= 2  # the click landed where it was aimed
            assert "1 positive point, a box" in seen["box"]
            assert "ground truth" in seen["paint"]
            for key, label in seen["panels"].items():
                assert re.search(r"IoU \d\.\d\d", label), (key, label)
            assert "IoUs in the panels are against your ground truth" in seen["timings"]
            assert "robust model" in seen["table"] and "adversarial" in seen["table"]
            assert ".png" in seen["download"]
            assert "cancel" in cancel_long_attack(page).lower()
        finally:
            browser.close()


def take_screenshot(path: Path) -> None:
    """The README screenshot: the real app (embedded models, shipped adapter) after one session."""
    import app
    from playwright.sync_api import sync_playwright

    from samdemo.app.handlers import Lab

    lab = Lab()
    lab.preload("sam-small")
    demo = app.build_demo(lab)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            css=app.CSS, theme=app.gr.themes.Soft())
    try:
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
            seen = run_session(page, url, steps=10, paint=False)
            page.locator("#transfer").click()
            wait_text(page, "#transfer-md", "prompt type", 300)
            page.get_by_text("Adapter singular values").click()  # open the accordion with the plot
            time.sleep(3)
            print(seen)
            page.screenshot(path=str(path), full_page=True)
            from PIL import Image  # 256 colours: a third of the size, no visible change

            Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if len(sys.argv) == 3 and sys.argv[1] == "--screenshot":
        take_screenshot(Path(sys.argv[2]))
    else:
        sys.exit("usage: python tests/test_app_browser.py --screenshot PATH.png")
