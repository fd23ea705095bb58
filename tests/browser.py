"""Open a page in a real headless Chromium (Debian's) and report what a person would see."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WIDTHS = (1280, 390)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _open(p, width: int = 1280, height: int = 900):
    browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    return browser, page, errors, requests


@contextlib.contextmanager
def loaded_page(path: Path):
    """``path`` loaded in a fresh browser: yields the page and the lists that collect its dialogs
    (dismissed) and page errors; the browser is closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page()
            dialogs: list[str] = []
            errors: list[str] = []
            tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(path.resolve().as_uri())
            tab.wait_for_load_state("load")
            yield tab, dialogs, errors
        finally:
            browser.close()


def _images(page) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => ({complete: i.complete, width: i.naturalWidth, alt: i.alt}))")


def inspect_page(path: Path, section_ids: list[str]) -> dict:
    """Load ``path``; return console errors, page errors, which sections are visible, and for
    every <img> whether it decoded (naturalWidth > 0)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page, errors, _ = _open(p)
        try:
            page.goto(path.resolve().as_uri())
            page.wait_for_load_state("load")
            visible = {sid: page.locator(f"section#{sid}").is_visible() for sid in section_ids}
            images = _images(page)
        finally:
            browser.close()
    return {"errors": errors, "visible": visible, "images": images}


_LAYOUT = """() => {
  const se = document.scrollingElement;
  const main = document.querySelector('main');
  const first = main ? main.firstElementChild : null;
  const firstTable = document.querySelector('table');
  const findings = document.getElementById('findings');
  const wide = [...document.querySelectorAll('.tbl')].filter(t => t.scrollWidth > t.clientWidth + 1)
    .map(t => (t.closest('section') || {}).id + ': ' + (t.querySelector('caption') || {textContent: ''}).textContent.slice(0, 60));
  return {scrollWidth: se.scrollWidth, innerWidth: window.innerWidth, first: first && first.id,
          findingsBeforeTables: !!findings && (!firstTable ||
            !!(findings.compareDocumentPosition(firstTable) & Node.DOCUMENT_POSITION_FOLLOWING)),
          sections: [...document.querySelectorAll('main > section')].map(s => s.id), wideTables: wide};
}"""


def inspect_report(path: Path, width: int = 1280, explore: bool = True) -> dict[str, Any]:
    """Load a report at a viewport ``width`` and check what issue 16 asks: console errors, network
    requests (none may leave the page), horizontal overflow, the findings section first (before
    any table), tables wider than their box, every image decoded; with ``explore``, hover a
    layer-explorer cell (its top-k rows), focus one with the keyboard, switch the prompt (does
    the grid redraw) and click a neuron-explorer layer."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser, page, errors, requests = _open(p, width)
        try:
            page.goto(path.resolve().as_uri())
            page.wait_for_load_state("load")
            out.update(page.evaluate(_LAYOUT))
            out["images"] = _images(page)
            if explore and page.locator("#layer-explorer").count():
                out.update(_explore_layers(page))
            if explore and page.locator(".nx[data-source]").count():
                out.update(_explore_neurons(page))
            out["after"] = page.evaluate(_LAYOUT)  # the explorers' redraws must not widen the page
        finally:
            browser.close()
    out["errors"], out["requests"] = errors, requests
    return out


def _explore_layers(page) -> dict[str, Any]:
    lx = page.locator("#layer-explorer")
    res: dict[str, Any] = {"cells": lx.locator(".lx-cell").count(), "k": None}
    cell = lx.locator(".lx-cell").nth(min(3, max(res["cells"] - 1, 0)))
    cell.scroll_into_view_if_needed()
    cell.hover()
    tip = lx.locator(".lx-tip")
    res["tip_visible"] = tip.is_visible()
    res["tip_rows"] = tip.locator("tr.k-row").count()
    res["tip_text"] = tip.inner_text() if res["tip_visible"] else ""
    res["tip_inside"] = page.evaluate("""() => { const t = document.querySelector('#layer-explorer .lx-tip');
        const r = t.getBoundingClientRect(); return r.left >= 0 && r.right <= document.documentElement.clientWidth; }""")
    res["k"] = page.evaluate("() => JSON.parse(document.getElementById("
                             "document.getElementById('layer-explorer').dataset.source).textContent).k")
    # keyboard: focus the first cell, move right, the tooltip follows
    page.mouse.move(0, 0)
    first = lx.locator(".lx-cell[tabindex='0']")
    first.focus()
    page.keyboard.press("ArrowRight")
    res["keyboard_moves"] = page.evaluate("() => document.activeElement.dataset.j") == "1"
    res["keyboard_tip"] = tip.is_visible()
    page.keyboard.press("Escape")
    # switching the prompt redraws the grid
    before = lx.locator(".lx-grid").inner_text()
    before_prompt = lx.locator(".lx-grid").get_attribute("data-prompt")
    options = lx.locator(".lx-prompt option")
    res["redrawn"] = None
    if options.count() > 1:
        lx.locator(".lx-prompt").select_option(index=1)
    else:
        langs = lx.locator(".lx-lang option")
        if langs.count() > 1:
            lx.locator(".lx-lang").select_option(index=1)
    after_prompt = lx.locator(".lx-grid").get_attribute("data-prompt")
    res["redrawn"] = after_prompt != before_prompt and lx.locator(".lx-grid").inner_text() != before
    res["curve_paths"] = lx.locator(".lx-curve svg path").count()
    return res


def _explore_neurons(page) -> dict[str, Any]:
    nx = page.locator(".nx[data-source]").first
    button = nx.locator("button[data-layer]").first
    button.scroll_into_view_if_needed()
    button.click()
    return {"neuron_detail": nx.locator(".nx-detail").inner_text(),
            "neuron_pressed": button.get_attribute("aria-pressed")}

