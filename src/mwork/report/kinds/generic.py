"""The generic kind: any folder no other kind recognises (results of a kind the report does not
know yet) gets its plots, its tables (compact, first rows) and a check of its JSON files, so
nothing a run wrote is left off the page."""

from __future__ import annotations

import mwork.report.html as H
from mwork.report.format import as_float, sig
from mwork.report.html import Markup, el
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

MAX_ROWS = 25
MAX_COLUMNS = 10
SHOWN = (".csv", ".png", ".json")


def _recognise(folder: FolderView) -> bool:
    return any(n.endswith(SHOWN) for n in folder.names)


def compact_table(sec: Section, name: str) -> None:
    """A CSV as a compact table: numbers to three significant digits, the first rows and columns
    (the rest is in the file)."""
    rows = sec.csv(name)
    if rows is None:
        return
    if not rows:
        sec.add(H.note(Markup("{} has a header and no rows.").format(el("code", name))))
        return
    head = list(rows[0])
    shown = head[:MAX_COLUMNS]
    numeric = {c for c in shown if all(as_float(r[c]) is not None or r[c].strip() in ("", "nan") for r in rows)}
    body = [[H.Cell(sig(r[c]), num=True) if c in numeric else r[c] for c in shown] for r in rows[:MAX_ROWS]]
    cut = []
    if len(rows) > MAX_ROWS:
        cut.append(f"first {MAX_ROWS} of {len(rows)} rows")
    if len(head) > MAX_COLUMNS:
        cut.append(f"first {MAX_COLUMNS} of {len(head)} columns")
    sec.table([H.Cell(c, num=c in numeric) for c in shown], body,
              caption=H.concat(el("code", name), f" ({', '.join(cut)}; the rest is in the file)" if cut else None))


def render_generic(sec: Section) -> None:
    sec.title = f"Results in {sec.view.rel}" if sec.view.rel != "." else "Results"
    for name in sec.view.with_suffix(".png"):
        sec.image(name, name[:-4].replace("_", " "), name)
    for name in sec.view.with_suffix(".csv"):
        compact_table(sec, name)
    sec.check_json_files(sec.view.with_suffix(".json"))


register_results_kind(ResultsKind("results", "Results", _recognise, render_generic, order=900))
