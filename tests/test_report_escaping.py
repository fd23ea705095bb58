"""The report never runs what a results file holds (results folders are shared between researchers).

Markup (``<img src=x onerror=alert(1)>``, ``"><script>alert(1)</script>``, ``' onmouseover='x``,
``javascript:alert(1)``) is fed through every field of every results kind the page reads -- and
through file and folder names, run.json and the explorers' JSON -- and the page is parsed with
Python's html.parser: its elements and attributes are exactly those of the same page drawn from
benign strings, no event-handler attribute or foreign script appears, every link stays a relative
URL, every value arrives intact as text, and the embedded JSON cannot close its script element.
The HTML writer itself (:mod:`mwork.report.html`) and the page's script are checked too."""

from __future__ import annotations

import csv
import json
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from safetensors.numpy import save_file

from mwork.report import html as H
from mwork.report import render_report
from mwork.report.html import Cell, Markup, el
from mwork.report.section import Page
from tests.browser import loaded_page
from tests.test_report import needs_browser
from tests.test_report_kinds import MGSM, STEER, XQUAD, write_evals, write_methods, write_steer

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = '"><script>alert(1)</script>'
QUOTE = "' onmouseover='x"
JS_URL = "javascript:alert(1)"
PAYLOADS = (IMG, SCRIPT, QUOTE, JS_URL)
PAYLOAD = " " + "".join(PAYLOADS)  # appended to every text value
NAME_PAYLOAD = " " + IMG + "\"' onmouseover='x"  # the same without "/": for file and folder names

Text = Callable[[str], str]


def _benign(value: str) -> str:
    return value


def _evil(value: str) -> str:
    return value + PAYLOAD


def _evil_name(value: str) -> str:
    return value + NAME_PAYLOAD


# ---- writing results folders ------------------------------------------------------------------
def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\xff\xff")) + chunk(b"IEND", b""))


def _csv(path: Path, head: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(head)
        w.writerows(rows)


def _json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")


def _neuron_set(path: Path, kind: str, meta: dict[str, Any]) -> None:
    mask = np.zeros((2, 4), dtype=bool)
    mask[0, 1] = mask[1, 2] = True
    save_file({f"mask.{kind}": mask, f"extra.doc_count.{kind}": np.arange(8, dtype=np.int64).reshape(2, 4)},
              str(path), metadata={"mwork": json.dumps(meta)})
    _json(path.with_suffix(".json"), meta)


def write_lens(out: Path, t: Text) -> None:
    from mwork.lens.explorer import FORMAT, VERSION

    langs = [t("lens-lang-a"), t("lens-lang-b")]
    _csv(out / "lens.csv", ["input_lang", "layer", "english_share", "non_english_share", "unknown_share", "n_tokens"],
         [[lang, layer, share, 1 - share, 0.2, 10] for lang in langs
          for layer, share in enumerate((0.1, 0.6, 0.7, 0.1))])
    (out / "lens.png").write_bytes(_png())
    shares = {lang: [{"english_share": 0.5, "unknown_share": 0.2, "per_language": {lang: 0.3}} for _ in range(4)]
              for lang in langs}
    _json(out / "lens.json", {"model": t("lens-model"), "top_k": t("lens-top-k"), "shares": shares,
                              "regions": {"found": False, "reason": t("lens-region-reason")},
                              "n_prompts": {lang: t("lens-n-prompts") for lang in langs},
                              "warnings": [t("lens-warning")]})
    vocab = [[0, t("lens-token-a"), langs[0]], [1, t("lens-token-b"), t("lens-token-label")],
             [2, "</script><!--", "en"]]
    n_layers, positions, k = 4, [0, 1, 2], 2
    top = [(i % 3) for i in range(n_layers * len(positions) * k)]
    _json(out / "lens_explorer.json", {
        "format": FORMAT, "version": VERSION, "model": t("lens-explorer-model"), "num_layers": n_layers - 1, "top_k": k,
        "vocab": vocab, "prompts": [{"lang": langs[0], "text": t("lens-prompt-text"), "n_prompt": 2,
                                     "tokens": [0, 1, 2], "positions": positions, "top": top,
                                     "prob": [0.5] * len(top)}]})


def write_neurons(out: Path, t: Text, name: Text) -> None:
    sets, kind = [name("set-a"), name("set-b")], t("kind-x")
    _csv(out / "summary.csv", ["set", "kind", "count", "total", "fraction_of_model"],
         [[s, k, 2, 1000, 0.002] for s in sets for k in (kind, "all")])
    _csv(out / "counts_per_layer.csv", ["set", "kind", "layer", "count", "neurons_in_layer"],
         [[s, kind, layer, 1, 4] for s in sets for layer in (0, 1)])
    _csv(out / "jaccard.csv", ["set", *sets], [[sets[0], 1, 0.2], [sets[1], 0.2, 1]])
    (out / "per_layer.png").write_bytes(_png())
    meta = {"n_docs": t("neurons-n-docs"), "max_length": t("neurons-max-length"),
            "document_rule": {"top_fraction": 0.02}, "across_documents": {"min_doc_fraction": 0.9},
            "specific": {"description": t("neurons-description")}}
    (out / "specific").mkdir()
    _neuron_set(out / "specific" / f"{sets[0]}.safetensors", kind, meta)


def write_neuron_sets(out: Path, t: Text, name: Text) -> None:
    out.mkdir()
    save_file({"mask.ffn": np.zeros((2, 4), dtype=bool)}, str(out / f"{name('set-stem')}.safetensors"),
              metadata={"mwork": "{}"})
    _json(out / f"{name('set-stem')}.json", {"counts": {t("sets-kind"): [1, 2]}, "language": t("sets-language"),
                                             "count": 3, "fraction": 0.01, "n_docs": t("sets-n-docs")})


def write_deactivation(out: Path, t: Text) -> None:
    langs = [t("deact-lang-a"), t("deact-lang-b")]
    _json(out / "results.json", {"info": {"metric": t("deact-metric"), "higher_is_better": False, "seeds": [0],
                                          "english": t("deact-english"), "understanding": t("deact-u"),
                                          "generation": t("deact-g")}})
    _csv(out / "headline.csv", ["lang", "original", "random_mean", "specific", "neurons_off", "share_off"],
         [[lang, 10.0, 11.0, 40.0, 12, 0.004] for lang in langs])
    grid = [[t("deact-region-none"), t("deact-kinds"), t("deact-layers"), "none", 10, 20, 0, ""]]
    for region in (t("deact-region-a"), t("deact-region-b")):
        grid += [[region, t("deact-kinds"), t("deact-layers"), "specific", 11, 30, 0.3, 5],
                 [region, t("deact-kinds"), t("deact-layers"), "random", 10.5, 21, 0.01, 5]]
    _csv(out / "table.csv", ["region", "kinds", "layers", "neurons_off", "Eng", "n-Eng", "Δ", "mean_neurons"], grid)
    _csv(out / "matrix.csv", ["neurons_of", "eval_lang", "original", "random_mean", "specific"],
         [[a, b, 10.0, 11.0, 30.0 if a == b else 12.0] for a in langs for b in langs])
    (out / "deactivation.png").write_bytes(_png())


def write_enhance(out: Path, t: Text) -> None:
    lang, task = t("enh-lang"), t("enh-task")
    head = ["method", "trainable_parameters", "steps", f"ppl_{lang}_before", f"ppl_{lang}_after",
            f"ppl_{lang}_change_pct", f"{task}_before", f"{task}_after", f"{task}_change"]
    _csv(out / "compare.csv", head, [["neurons", 896, t("enh-steps"), 10.0, 9.0, -10.0, 0.2, 0.3, 0.1],
                                     [t("enh-method"), 896, t("enh-steps"), 10.0, 9.5, -5.0, 0.2, 0.25, 0.05]])
    _json(out / "compare.json", {"rows": [], "n_docs": t("enh-n-docs"), "neurons": {"meta": {"language": lang},
                                                                                    "count": 6},
                                 "settings": {"lr": 0.001}})


def write_enhance_run(out: Path, t: Text) -> None:
    _json(out / "delta.json", {"method": t("run-method"), "trainable_parameters": 10, "steps": {"done": t("run-steps")},
                               "losses": [1.0, 0.5], "wall_time_s": 3.0, "finished": True})


def write_bench(out: Path, t: Text) -> None:
    _json(out / "bench.json", {"model": t("bench-model"), "docs": t("bench-docs"), "seq_len": t("bench-seq-len"),
                               "threads": t("bench-threads"), "qk_kernel": t("bench-qk-kernel"),
                               "repeats": t("bench-repeats"), "forward_s": 1.5, "importance_s": 4.8, "ffn_v_s": 2.0,
                               "overhead": 3.2, "ffn_v_overhead": 1.3, "reference_status": t("bench-reference-status")})


def write_generic(out: Path, t: Text, name: Text, js_name: str) -> None:
    """A folder no kind knows, with names and values of its own: its tables, plot and JSON files."""
    _csv(out / f"{name('numbers')}.csv", [t("generic-column"), "number"], [[t("generic-cell"), 1.23456]])
    _csv(out / f"{name('empty')}.csv", ["a", "b"], [])
    (out / f"{name('plot')}.png").write_bytes(_png())
    _json(out / f"{name('values')}.json", {"a": t("generic-json")})
    (out / f"{name('broken')}.json").write_text("{" + t("generic-broken"), encoding="utf-8")
    (out / js_name).write_text("a file named like a URL", encoding="utf-8")


def write_run(root: Path, t: Text) -> None:
    _json(root / "run.json", {
        "title": t("run-title"), "command": t("run-command"), "notes": [t("run-note")], "total_seconds": 12.0,
        "this_run_seconds": 2.0, "stages": [{"name": t("run-stage"), "seconds": 3.0, "cached": False,
                                             "reason": t("run-stage-reason")}],
        "settings": {"model": t("run-model"), t("run-setting-key"): t("run-setting"), "list": [t("run-list")],
                     "nested": {t("run-nested-key"): t("run-nested")}},
        "versions": {t("run-package"): t("run-version")}})


def _rewrite(folder: Path, rename: dict[str, str], fields: dict[str, Text]) -> None:
    """Every CSV cell, JSON(-lines) string and object key under ``folder`` that is a key of
    ``rename`` becomes its value; the strings under the JSON keys (CSV columns) of ``fields``
    pass through their function."""
    def value(v: Any, key: str | None = None) -> Any:
        if isinstance(v, dict):
            return {rename.get(k, k): value(x, k) for k, x in v.items()}
        if isinstance(v, list):
            return [value(x, key) for x in v]
        if isinstance(v, str):
            return fields[key](v) if key in fields else rename.get(v, v)
        return v

    for path in sorted(folder.rglob("*")):
        if path.suffix == ".csv":
            rows = list(csv.reader(path.open(newline="", encoding="utf-8")))
            head = rows[0]
            body = [[fields[c](x) if c in fields else rename.get(x, x) for c, x in zip(head, r)] for r in rows[1:]]
            _csv(path, [rename.get(c, c) for c in head], body)
        elif path.suffix == ".json":
            _json(path, value(json.loads(path.read_text(encoding="utf-8"))))
        elif path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            path.write_text("".join(json.dumps(value(json.loads(x)), ensure_ascii=False) + "\n" for x in lines),
                            encoding="utf-8")


def write_all(root: Path, evil: bool) -> Path:
    """Every results kind the page reads, with ``PAYLOAD`` after each text value (or nothing)."""
    t, name = (_evil, _evil_name) if evil else (_benign, _benign)
    root = root / name("results")
    root.mkdir(parents=True)
    write_run(root, t)
    write_lens(root / "lens", t)
    write_neurons(root / "neurons", t, name)
    write_neuron_sets(root / "sets", t, name)
    write_deactivation(root / "deactivation", t)
    write_enhance(root / "enhance", t)
    write_enhance_run(root / "enhance-run", t)
    write_bench(root / "bench", t)
    write_generic(root / name("other"), t, name, JS_URL if evil else "plain-file")
    # the producers' own writers (as tests/test_report_kinds.py), their names and texts then changed
    write_methods(root / "methods")
    _rewrite(root / "methods", {v: t(v) for v in ("plnd", "lape", "0.5%", "1%", "en", "fr", "tiny-random-llama",
                                                   "zero")}, {})
    write_steer(root / "steer", STEER)
    _rewrite(root / "steer", {v: t(v) for v in ("zh", "en", "mean", "ffn", "all")},
             {"prompt": t, "prompt_id": t, "text": t, "unsteered_text": t})
    write_evals(root / "eval", {XQUAD: 0.2, MGSM: 0.1}, {XQUAD: 0.55, MGSM: 0.3})
    _rewrite(root / "eval", {v: t(v) for v in (XQUAD, MGSM, "tiny-random-llama", "0.4.13")},
             {"neurons": name, "random_like": name})
    for run in ("base", "zh-off", "random-zh"):
        (root / "eval" / run).rename(root / "eval" / name(run))
    return root


# ---- reading the page back ----------------------------------------------------------------------
class _Page(HTMLParser):
    """What a browser would build from the page: elements, attributes, text, scripts."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attributes: set[tuple[str, str]] = set()
        self.values: list[str] = []  # attribute values
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value) of href and src
        self.text: list[str] = []
        self.scripts: list[list[str]] = []  # [type, content]
        self._script = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for key, value in attrs:
            self.attributes.add((tag, key))
            self.values.append(value or "")
            if key in ("href", "src"):
                self.urls.append((tag, key, value or ""))
        if tag == "script":
            self._script = True
            self.scripts.append([dict(attrs).get("type") or "", ""])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = False

    def handle_data(self, data: str) -> None:
        if self._script:
            self.scripts[-1][1] += data
        else:
            self.text.append(data)

    def json_values(self) -> list[Any]:
        return [json.loads(content) for kind, content in self.scripts if kind == "application/json"]


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _render(root: Path) -> tuple[str, _Page]:
    html = render_report(root).read_text(encoding="utf-8")
    return html, _Page(html)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, tuple[str, _Page]]:
    out = {}
    for kind in ("benign", "evil"):
        with pytest.warns(UserWarning):  # the broken JSON file is said where the user is, too
            out[kind] = _render(write_all(tmp_path_factory.mktemp(kind), evil=kind == "evil"))
    return out


def _assert_inert(html: str, page: _Page, benign: _Page) -> None:
    """No element, attribute, script or URL that the benign page lacks."""
    assert page.tags == benign.tags, page.tags ^ benign.tags
    assert page.attributes == benign.attributes, page.attributes ^ benign.attributes
    assert not [a for a in page.attributes if a[1].startswith("on")]
    assert "<img src=x" not in html and "<script>alert" not in html
    # the page's own script and its JSON data elements, nothing else; each JSON element intact
    assert [kind for kind, _ in page.scripts].count("") == 1
    assert len(page.scripts) == len(benign.scripts)
    assert len(page.json_values()) == len(page.scripts) - 1
    for tag, key, url in page.urls:
        bare = re.sub(r"[\x00-\x20]", "", url).lower()
        assert not bare.startswith("javascript:"), url
        assert url.startswith("#") or not re.match(r"[a-z][a-z0-9+.-]*:", bare) or (
            tag == "img" and key == "src" and bare.startswith("data:image/png;base64,")), url


def test_markup_in_every_field_of_every_kind_stays_text(pages):
    benign_html, benign = pages["benign"]
    html, page = pages["evil"]
    _assert_inert(html, page, benign)
    # every kind drew its section (no value broke one) and the page is the benign one's, element for element
    for heading in ("Layer-wise decoding", "Language-specific neurons", "Neuron sets", "Deactivation experiment",
                    "Detection methods compared", "Steering the output language", "Task evaluation (lm-eval)",
                    "Enhancement: fine-tuning", "Enhancement run", "Detection benchmark", "Results in other"):
        assert heading in html, heading
    assert "could not be rendered" not in html
    assert len(re.findall(r"<[a-z]", html)) == len(re.findall(r"<[a-z]", benign_html))


def test_every_value_arrives_whole_as_text(pages):
    """Each text value reaches the page unbroken, as text, an attribute value or an explorer's
    JSON string -- so each field above was fed through, and none was cut by markup."""
    _, page = pages["evil"]
    seen = [*page.text, *page.values, *(s for v in page.json_values() for s in _strings(v))]
    labels = re.findall(r'"((?:lens|neurons|kind|sets|deact|enh|run|bench|generic)-[a-z-]+)"',
                        Path(__file__).read_text(encoding="utf-8"))
    assert len(set(labels)) > 50
    missing = [lab for lab in sorted(set(labels)) if not any(lab + PAYLOAD in s for s in seen)]
    # not shown by design: the unmodified row's region name (its numbers are the table's note), a JSON
    # file of an unknown kind (only checked and linked), a broken file's text; a set's kind is in capitals
    assert missing == ["deact-region-none", "generic-broken", "generic-json", "sets-kind"], missing
    assert any(("sets-kind" + PAYLOAD).upper() in s for s in page.text)
    for value in ("plnd", "lape", "0.5%", "en", "fr", "tiny-random-llama", XQUAD, MGSM, "zh", "mean", "ffn",
                  "steered specific None 2 2", "plain answer 0", "A second prompt"):
        assert any(value + PAYLOAD in s for s in seen), value
    # file and folder names: as text, and as links that are relative URLs, percent-encoded
    assert any("numbers" + NAME_PAYLOAD + ".csv" in s for s in page.text)
    assert any(JS_URL in s for s in page.text)
    hrefs = [url for tag, key, url in page.urls if tag == "a" and not url.startswith("#")]
    assert any(url.endswith("javascript%3Aalert%281%29") for url in hrefs), hrefs
    assert all(":" not in url for url in hrefs)


def test_the_findings_and_warnings_escape_what_they_quote(pages):
    html, _ = pages["evil"]
    start = html.index('<section id="findings">')
    findings = html[start:html.index("</section>", start)]
    assert "deact-metric &lt;img src=x onerror=alert(1)&gt;&quot;&gt;&lt;script&gt;" in findings
    assert "problem with the result files" in findings and "broken" + H.esc(NAME_PAYLOAD) in findings
    assert f"<title>run-title{H.esc(PAYLOAD)}</title>" in html


def test_the_explorers_json_cannot_end_its_script_element(pages):
    html, page = pages["evil"]
    for match in re.finditer(r"<script type='application/json' id='[^']*'>(.*?)</script>", html, flags=re.S):
        body = match.group(1)
        assert not re.search(r"[<>&\u2028\u2029]", body)
        json.loads(body)
    lens = [v for v in page.json_values() if "vocab" in v][0]
    assert ["</script><!--", "en"] in lens["vocab"] and lens["model"] == "lens-explorer-model" + PAYLOAD
    neurons = [v for v in page.json_values() if "langs" in v and "counts" in v][0]
    assert neurons["langs"] == ["set-a" + NAME_PAYLOAD, "set-b" + NAME_PAYLOAD]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_markup_in_numbers_and_damaged_files_is_said_as_text(tmp_path, payload):
    """A value where a number belongs is a warning that quotes it, and the quote is text."""
    with pytest.warns(UserWarning):
        _, benign = _render(write_all(tmp_path / "b", evil=False))
    root = write_all(tmp_path / "e", evil=False)
    for path, column in ((root / "deactivation" / "headline.csv", "original"),
                         (root / "methods" / "selectivity.csv", "own"), (root / "lens" / "lens.csv", "english_share")):
        rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
        rows[0][column] = payload
        _csv(path, list(rows[0]), [list(r.values()) for r in rows])
    (root / "bench" / "bench.json").write_text(json.dumps({"forward_s": payload, "importance_s": [payload],
                                                           "overhead": payload, "model": {payload: payload}}))
    (root / "run.json").write_text(json.dumps([payload]))
    info = json.loads((root / "lens" / "lens.json").read_text(encoding="utf-8"))
    info["regions"] = {"found": True, "understanding": payload, "generation": 1, "num_layers": 3}
    _json(root / "lens" / "lens.json", info)
    with pytest.warns(UserWarning):
        html, page = _render(root)
    assert page.tags <= benign.tags and page.attributes <= benign.attributes
    assert not [a for a in page.attributes if a[1].startswith("on")]
    assert payload not in html or payload == JS_URL  # "javascript:alert(1)" as text is harmless
    assert sum(payload in s for s in page.text) >= 3  # quoted in the warnings, as text
    # the lens's int(payload) failed: said on the page with the error, which quotes the value as text
    assert "is not a number" in html and "could not be rendered" in html


# ---- the writer ---------------------------------------------------------------------------------
def test_the_writer_escapes_text_and_attributes():
    assert el("p", IMG) == "<p>&lt;img src=x onerror=alert(1)&gt;</p>"
    assert el("a", "x", href="a b.csv", title=QUOTE) == "<a href='a b.csv' title='&#x27; onmouseover=&#x27;x'>x</a>"
    assert el("td", SCRIPT, class_="n") == "<td class='n'>&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;</td>"
    assert el("p", el("code", IMG), " ", Markup("<br>")) == \
        "<p><code>&lt;img src=x onerror=alert(1)&gt;</code> <br></p>"
    assert el("details", "s", open=True, hidden=False, title=None) == "<details open>s</details>"
    assert el("img", alt=QUOTE, src="data:image/png;base64,AA==") == \
        "<img alt='&#x27; onmouseover=&#x27;x' src='data:image/png;base64,AA=='>"
    assert el("section", id="findings", quote='"') == '<section id="findings"></section>'
    assert Markup("{} of {:.1f}").format(IMG, 2.25) == "&lt;img src=x onerror=alert(1)&gt; of 2.2"
    assert Markup("a") + IMG == "a&lt;img src=x onerror=alert(1)&gt;" and IMG + Markup("b") == \
        "&lt;img src=x onerror=alert(1)&gt;b"
    assert Markup(", ").join([IMG, Markup("<br>")]) == "&lt;img src=x onerror=alert(1)&gt;, <br>"
    assert H.concat("<", None, Markup("<i>"), 3) == "&lt;<i>3"
    assert isinstance(el("p"), Markup) and isinstance(Markup("{}").format(1), Markup)
    with pytest.raises(TypeError):
        Markup("%s") % IMG
    with pytest.raises(TypeError):
        Cell(raw=IMG)  # raw HTML is Markup only
    assert Cell(IMG).render() == "<td>&lt;img src=x onerror=alert(1)&gt;</td>"
    assert Cell(IMG, title=QUOTE, style="color:red").render() == \
        "<td style='color:red' title='&#x27; onmouseover=&#x27;x'>&lt;img src=x onerror=alert(1)&gt;</td>"
    assert H.table([IMG], [[QUOTE]], caption=SCRIPT).count("<") == H.table(["a"], [["b"]], caption="c").count("<")
    for bad in ("onclick", "onerror", "onclick x", "a b", "x>y", ""):
        with pytest.raises(ValueError):
            el("p", **{bad: "1"})
    with pytest.raises(ValueError):
        el("img onerror=alert(1)")


@pytest.mark.parametrize("url", [JS_URL, " JavaScript:alert(1)", "java\tscript:alert(1)", "jav\nascript:x",
                                 "\x01javascript:x", "vbscript:x", "data:text/html;base64,PHNjcmlwdD4=",
                                 "file:///etc/passwd"])
def test_links_refuse_other_schemes(url):
    with pytest.raises(ValueError):
        el("a", "x", href=url)
    with pytest.raises(ValueError):
        el("img", src=url)


def test_links_to_files_are_relative_and_encoded(tmp_path):
    for url in ("#findings", "lens/lens.csv", "a%3Ab.csv", "https://example.org/x", "../x.json"):
        assert H.safe_url(url) == url
    assert el("img", src="data:image/png;base64,AA==").startswith("<img")
    with pytest.raises(ValueError):
        el("a", "x", href="data:image/png;base64,AA==")  # an image's src only
    page = Page(tmp_path, tmp_path / "index.html")
    for name in (JS_URL, IMG, "' onmouseover='x.json", "a b#c?d.csv"):
        href = page.href(tmp_path / name)
        assert re.fullmatch(r"[A-Za-z0-9_.~%/-]+", href), href
        assert el("a", name, href=href).count("<") == 2


def test_script_elements_hold_only_markup_that_cannot_end_them():
    text = H.script_json({"a": "</script><!-- & \u2028\u2029 <b>"})
    assert not re.search(r"[<>&\u2028\u2029]", text) and json.loads(text) == {"a": "</script><!-- & \u2028\u2029 <b>"}
    assert el("script", text, type="application/json", id="d").count("</script>") == 1
    with pytest.raises(TypeError):
        el("script", "alert(1)")  # text is not a script
    with pytest.raises(ValueError):
        el("script", Markup("x = '</script><img src=x onerror=alert(1)>'"))
    with pytest.raises(ValueError):
        el("style", Markup("</style><script>alert(1)</script>"))


def test_a_kind_that_adds_text_gets_text():
    """A user's kind that hands the section a str gets it escaped: only Markup is HTML."""
    from mwork.report.registry import FolderView, ResultsKind
    from mwork.report.section import Section

    page = Page(Path("."), Path("index.html"))
    sec = Section(page, FolderView(Path("."), ".", frozenset(), frozenset()), ResultsKind(
        "x", "X", lambda f: True, lambda s: None), "x")
    sec.add(IMG)
    sec.finding(SCRIPT)
    sec.paper(QUOTE)
    sec.table([IMG], [[IMG]], caption=IMG)
    rendered = sec.render()
    assert "<img" not in rendered and "<script" not in rendered and "onmouseover='" not in rendered
    assert sec.findings[0].html == H.esc(SCRIPT)


def test_the_pages_script_never_parses_data_as_html():
    from mwork.report.page import asset

    js = re.sub(r"/\*.*?\*/", "", asset("report.js"), flags=re.S)  # code, not the comments that name the sinks
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setTimeout(\"", "createContextualFragment", "DOMParser"):
        assert sink not in js, sink
    assert "textContent" in js and "setAttribute" in js


@needs_browser
def test_the_evil_page_runs_nothing_in_a_real_browser(pages, tmp_path):
    """Loaded, its explorers drawn and a cell's tooltip shown: no dialog, no error, no handler."""
    page_file = tmp_path / "evil.html"
    page_file.write_text(pages["evil"][0], encoding="utf-8")
    with loaded_page(page_file) as (tab, dialogs, errors):
        tab.hover(".lx-cell")
        tip = tab.evaluate("() => document.querySelector('.lx-tip').textContent")
        tab.click(".nx button[data-layer]")
        handlers = tab.evaluate("() => [...document.querySelectorAll('*')].filter(e => [...e.attributes]"
                                ".some(a => a.name.startsWith('on'))).length")
        images = tab.evaluate("() => [...document.images].filter(i => !i.src.startsWith('data:')).length")
    assert dialogs == [] and errors == [] and handlers == 0 and images == 0
    assert "onerror=alert(1)" in tip  # the token's text, shown as text


def test_a_set_name_from_a_results_file_never_reads_outside_the_folder(tmp_path):
    from mwork.report.kinds.neurons import _set_file

    folder = tmp_path / "results"
    (folder / "specific").mkdir(parents=True)
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (folder / "specific" / "zh.safetensors").write_bytes(b"x")
    assert _set_file(folder, "zh") == folder / "specific" / "zh.safetensors"
    for name in ("../../outside", "../outside", str(tmp_path / "outside"), "zh\x00"):
        assert _set_file(folder, name) is None, name
