"""Render any mwork results folder into one self-contained HTML research page.

The page opens with the findings in sentences (each linked to its evidence), then one section
per results folder (a plot, a compact table, one sentence relating it to the paper, the layer
and neuron explorers, links to the raw files), and ends with the settings and versions. It
embeds its images (base64) and its script and style (ours, inline), so it needs no server and
no network: mail it to a colleague as it is. Which folder becomes which section is decided by
the registry of results kinds (:mod:`mwork.report.registry`).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import mwork.report.html as H
from mwork.report.html import Markup, el
from mwork.report.format import count, seconds
from mwork.report.read import BadResultFile, read_json
from mwork.report.registry import assign
from mwork.report.section import Page, Section, dump_data

RESERVED_IDS = ("findings", "run", "contents")
# what a broken file can raise inside a kind's renderer: said on the page, never a crash
RENDER_ERRORS = (BadResultFile, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError, AttributeError)


def asset(name: str) -> str:
    """A file of the page's own style or script (``mwork/data/report/``)."""
    return resources.files("mwork").joinpath("data", "report", name).read_text(encoding="utf-8")


def _versions() -> dict[str, str]:
    out = {}
    for name in ("mwork", "torch", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            continue
    return {**out, "python": platform.python_version(), "platform": platform.platform()}


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v) if v else "–"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_value(x)}" for k, x in v.items()) if v else "–"
    return "–" if v is None else str(v)


def _run_section(run: dict[str, Any], root: Path, run_problem: Markup) -> Markup:
    parts = [el("h2", "Settings and versions")]
    if run_problem:
        parts.append(H.warning(run_problem))
    command = run.get("command") or f"mwork report {root}"
    parts.append(el("p", "Reproduce with ", el("code", command, class_="cmd"), "."))
    if "total_seconds" in run:
        extra = (f" ({seconds(run['this_run_seconds'])} in the run that drew this page; cached stages are not "
                 "recomputed)") if "this_run_seconds" in run else ""
        parts.append(el("p", f"Compute time of the results: {seconds(run['total_seconds'])}{extra}."))
    for note in run.get("notes") or []:
        parts.append(H.note(note))
    stages = run.get("stages") or []
    if stages:
        rows = [[st.get("name", "?"), H.Cell(seconds(st.get("seconds")), num=True), "cached" if st.get("cached") else
                 "computed", st.get("reason") or ""] for st in stages if isinstance(st, dict)]
        parts.append(H.table(["stage", H.Cell("time", num=True), "this run", "why it ran again"], rows,
                             caption="Stages"))
    settings = run.get("settings")
    if isinstance(settings, dict) and settings:
        parts.append(H.table(["setting", "value"], [[k, _value(v)] for k, v in settings.items()], caption="Settings",
                             cls="kv"))
    versions = run.get("versions") if isinstance(run.get("versions"), dict) else _versions()
    parts.append(H.table(["package", "version"], [[k, v] for k, v in versions.items()], caption="Versions",
                         cls="kv"))
    parts.append(el("p", f"Page rendered {_dt.datetime.now().isoformat(timespec='seconds')} from ",
                    el("code", str(root.resolve())), ".", class_="sub"))
    return el("section", parts, id="run")


def _findings(sections: list[Section], page: Page) -> Markup:
    items = []
    for sec in sections:
        for f in sec.findings:
            items.append(el("li", f.html, " ", el("a", "evidence", class_="ev", href=f"#{f.anchor}",
                                                  aria_label=f"evidence: {sec.title}")))
    parts = [el("h2", "Findings")]
    if items:
        parts.append(el("ul", items, class_="findings"))
    else:
        parts.append(el("p", "No finding could be computed from these results; the sections below show what there "
                             "is."))
    if page.warnings:
        lines = [el("li", el("code", f), " ", r, " (", el("a", "section", href=f"#{sid}"), ")")
                 for f, r, sid in page.warnings]
        n = len(page.warnings)
        parts.append(el("div", el("strong", f"{count(n)} problem{'s' if n > 1 else ''} with the result files"),
                        "; the findings leave out what these files would have said:", el("ul", lines),
                        class_="warn", role="note"))
    # double-quoted, as it always was: the one section that is not a results folder's (id='...')
    return el("section", parts, id="findings", quote='"')


def render_report(results_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Write ``index.html`` (or ``out``) for ``results_dir``; returns its path.

    Raises FileNotFoundError when ``results_dir`` is not a folder and ValueError when it holds no
    results. A damaged result file is a warning on the page, naming the file."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder at {root}")
    target = Path(out) if out else root / "index.html"
    if target.is_dir() or str(out or "").endswith(("/", os.sep)):
        target = target / "index.html"  # a folder: the page is its index.html
    from mwork.files import check_output_file

    # a page only ever goes to a .html name, never over a CSV or an input the report reads
    check_output_file(target, "html", suffixes=(".html", ".htm"), or_else=" (or a folder, for FOLDER/index.html)",
                      what="page")
    page = Page(root, target)
    page.ids.update(RESERVED_IDS)

    run: dict[str, Any] = {}
    run_problem = Markup()
    if (root / "run.json").is_file():
        try:
            value = read_json(root / "run.json")
            if isinstance(value, dict):
                run = value
            else:
                run_problem = Markup("{} is not a JSON object; the run's settings are not shown").format(
                    el("code", "run.json"))
        except BadResultFile as err:
            run_problem = Markup("{} {}; the run's settings are not shown").format(el("code", "run.json"), err.reason)
            page.warnings.append(("run.json", err.reason, "run"))

    assigned = assign(root)
    if not assigned:
        raise ValueError(f"{root} holds no results (no .csv, .png or .json files); run an mwork command with "
                         f"--out {root} first")
    # sub-folders are named by their path; the root by its kind, unless a sub-folder has that name
    ids = {view.rel: page.unique_id(view.rel) for view, _ in assigned if view.rel != "."}
    sections = []
    for view, kind in assigned:
        sid = ids.get(view.rel) or page.unique_id(kind.name if kind.name not in page.ids else f"top-{kind.name}")
        section = Section(page, view, kind, sid)
        try:
            kind.render(section)
        except RENDER_ERRORS as err:
            section.warn(view.path, f"could not be rendered as {kind.title.lower()} ({type(err).__name__}: {err})")
        sections.append(section)

    page_title = title or run.get("title") or "mwork results"
    model = (run.get("settings") or {}).get("model") if isinstance(run.get("settings"), dict) else None
    nav = [("findings", "Findings"), *((s.id, s.title) for s in sections), ("run", "Settings and versions")]
    header = el("header", el("h1", page_title),
                el("p", ["Model ", el("code", model), ". "] if model else None, "Results in ",
                   el("code", root.name or str(root)), "; settings and versions at the end.", class_="sub"),
                el("nav", [el("a", t, href=f"#{sid}") for sid, t in nav], id="contents", aria_label="Sections"))
    rendered = [s.render() for s in sections]  # before the findings: rendering may add warnings
    main_ = el("main", _findings(sections, page), rendered, _run_section(run, root, run_problem))
    # the page's own style and script (package files, not results) are trusted as they are
    head = el("head", el("meta", charset="utf-8"),
              el("meta", name="viewport", content="width=device-width, initial-scale=1"),
              el("title", page_title), el("style", Markup(asset("report.css"))))
    body = el("body", header, main_, dump_data(page.data), el("script", Markup(asset("report.js"))))
    html = Markup("<!doctype html>") + el("html", head, body, lang="en")
    from mwork.files import write_text

    write_text(target, html)
    for file, reason, _ in page.warnings:  # said where the user is too, not only on the page
        warnings.warn(f"{root / file} {reason} (shown on the page)", stacklevel=2)
    return target
