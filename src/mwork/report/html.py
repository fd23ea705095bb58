"""Render any mwork results folder into one self-contained HTML page.

The page embeds every PNG (base64), shows every CSV as a table and every JSON file in a
collapsible block, one section per results folder, plus the versions, the time taken and the
command that reproduces the run (from ``run.json`` when a command wrote one). It needs no
server and no network: mail it to a colleague as it is.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import platform
import re
from pathlib import Path
from typing import Any

# What a folder holds, recognised by a file it contains: (file name, section title, paper link)
KNOWN_RESULTS: tuple[tuple[str, str, str], ...] = (
    ("lens.csv", "Layer-wise decoding (logit lens)", "paper Figure 1"),
    ("table.csv", "Deactivation experiment", "paper Tables 1-6"),
    ("delta.json", "Enhancement (neuron-subset fine-tuning)", "paper Table 7"),
    ("compare.csv", "Enhancement vs baselines", "paper Table 7"),
    ("stats.csv", "Language-specific neurons", "paper §2.2, Figure 3"),
    ("bench.json", "Detection benchmark", ""),
)
MAX_TABLE_ROWS = 300
MAX_JSON_CHARS = 20_000

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
padding:0 1rem;color:#1a1a1a;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
.sub{color:#666} nav a{margin-right:1rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
pre{background:#f7f7f7;padding:.6rem;overflow-x:auto;font-size:.8rem}
code{background:#f3f3f3;padding:0 .2rem}
"""


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("mwork", "torch", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            continue
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "results"


def _csv_table(path: Path) -> str:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return "<p><em>empty table</em></p>"
    head, body = rows[0], rows[1:]
    cut = len(body) > MAX_TABLE_ROWS
    body = body[:MAX_TABLE_ROWS]

    def cell(v: str) -> str:
        try:
            x = float(v)
            v = f"{x:.4g}" if ("." in v or "e" in v.lower()) else v
        except ValueError:
            pass
        return html.escape(v)

    parts = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for r in body:
        parts.append("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>")
    parts.append("</tbody></table>")
    if cut:
        parts.append(f"<p class='sub'>first {MAX_TABLE_ROWS} rows shown; the full table is {path.name}</p>")
    return "".join(parts)


def _png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(path.stem.replace("_", " "))
    return f"<figure><img alt='{alt}' src='data:image/png;base64,{data}'><figcaption>{html.escape(path.name)}</figcaption></figure>"


def _json_block(path: Path) -> str:
    try:
        text = json.dumps(json.loads(path.read_text(encoding="utf-8")), indent=2, ensure_ascii=False)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    if len(text) > MAX_JSON_CHARS:
        text = text[:MAX_JSON_CHARS] + "\n… (truncated; see the file)"
    return f"<details><summary>{html.escape(path.name)}</summary><pre>{html.escape(text)}</pre></details>"


def _title_for(folder: Path) -> tuple[str, str]:
    names = {p.name for p in folder.iterdir()}
    for fname, title, ref in KNOWN_RESULTS:
        if fname in names:
            return title, ref
    return folder.name, ""


_SHOWN = (".csv", ".png", ".json", ".md")


def _shown_files(folder: Path, root: Path) -> list[Path]:
    """Files of ``folder`` the page shows; at the root, not the copies of files shown below it."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _SHOWN and p.name != "run.json")
    if folder == root:
        below = {(p.name, p.read_bytes()) for p in root.rglob("*") if p.is_file() and p.parent != root
                 and p.suffix in _SHOWN}
        files = [p for p in files if (p.name, p.read_bytes()) not in below]
    return files


def _result_folders(root: Path) -> list[Path]:
    """The root and every sub-folder that holds a table, a plot or a JSON file, in name order."""
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    return [f for f in folders if _shown_files(f, root)]


def _section(folder: Path, root: Path) -> tuple[str, str]:
    title, ref = _title_for(folder)
    rel = "." if folder == root else folder.relative_to(root).as_posix()
    sid = _slug(rel if rel != "." else "summary")
    parts = [f"<section id='{sid}'><h2>{html.escape(title)}</h2>",
             f"<p class='sub'>folder <code>{html.escape(rel)}</code>{' — ' + html.escape(ref) if ref else ''}</p>"]
    files = _shown_files(folder, root)
    for p in files:
        if p.suffix == ".md" and p.name.lower() not in ("readme.md",):
            parts.append(f"<details open><summary>{html.escape(p.name)}</summary><pre>{html.escape(p.read_text(encoding='utf-8'))}</pre></details>")
    for p in files:
        if p.suffix == ".png":
            parts.append(_png(p))
    for p in files:
        if p.suffix == ".csv":
            parts.append(f"<h3>{html.escape(p.name)}</h3>{_csv_table(p)}")
    for p in files:
        if p.suffix == ".json":
            parts.append(_json_block(p))
    parts.append("</section>")
    return sid, "".join(parts)


def render_report(results_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Write ``index.html`` (or ``out``) for ``results_dir``; returns its path."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder at {root}")
    target = Path(out) if out else root / "index.html"
    run: dict[str, Any] = {}
    if (root / "run.json").exists():
        run = json.loads((root / "run.json").read_text(encoding="utf-8"))
    folders = _result_folders(root)
    if not folders:
        raise ValueError(f"{root} holds no results (no .csv, .png or .json files); run an mwork command with --out {root} first")
    sections = [_section(f, root) for f in folders]
    versions = run.get("versions") or _versions()
    command = run.get("command") or f"mwork report {root}"
    head = [
        f"<h1>{html.escape(title or run.get('title') or 'mwork results')}</h1>",
        f"<p class='sub'>{html.escape(str(root.resolve()))} — rendered {_dt.datetime.now().isoformat(timespec='seconds')}</p>",
        "<nav>" + "".join(f"<a href='#{sid}'>{html.escape(sid)}</a>" for sid, _ in sections) + "</nav>",
        "<section id='run'><h2>Run</h2>",
        f"<p>Reproduce with: <code>{html.escape(command)}</code></p>",
    ]
    if "stages" in run:
        head.append("<table><thead><tr><th>stage</th><th>seconds</th><th>cached</th></tr></thead><tbody>")
        for st in run["stages"]:
            head.append(f"<tr><td>{html.escape(str(st.get('name')))}</td><td>{st.get('seconds', 0):.1f}</td>"
                        f"<td>{'yes' if st.get('cached') else 'no'}</td></tr>")
        head.append("</tbody></table>")
    if "total_seconds" in run:
        head.append(f"<p>Time taken: {run['total_seconds']:.0f} s</p>")
    if "settings" in run:
        head.append(f"<details open><summary>settings</summary><pre>{html.escape(json.dumps(run['settings'], indent=2))}</pre></details>")
    head.append("<h3>Versions</h3><table><tbody>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in versions.items()) + "</tbody></table></section>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title or 'mwork results')}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(head)}{''.join(s for _, s in sections)}</body></html>")
    target.write_text(page, encoding="utf-8")
    return target
