"""Open a page in a real headless Chromium (Debian's) and report what a person would see."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def inspect_page(path: Path, section_ids: list[str]) -> dict:
    """Load ``path``; return console errors, page errors, which sections are visible, and for
    every <img> whether it decoded (naturalWidth > 0)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.resolve().as_uri())
            page.wait_for_load_state("load")
            visible = {sid: page.locator(f"section#{sid}").is_visible() for sid in section_ids}
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => ({complete: i.complete, width: i.naturalWidth}))")
        finally:
            browser.close()
    return {"errors": errors, "visible": visible, "images": images}
