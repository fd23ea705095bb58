"""scripts/readme_figures.py: the README's figures and tables come from a real demo folder."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import pytest

from mwork.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "scripts" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rf = _load_script()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A finished demo folder on a tiny model, at the smallest sizes (seconds, not minutes)."""
    out = tmp_path_factory.mktemp("demo")
    run_demo(out, quick=True, model="tiny-random-llama", lens={"langs": ("zh", "fr"), "max_prompts": 1,
             "max_new_tokens": 1}, langs=("en", "zh", "fr"), deact_langs=("en", "zh"), detect_docs=3,
             detect={"max_length": 32}, eval_texts=2, eval_max_length=32, enhance_docs=2,
             enhance={"max_steps": 1, "max_length": 32}, enhance_baselines=("random",))
    return out


@pytest.fixture(scope="module")
def figures(demo_dir, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("figures")
    no_browser = ["--no-screenshot"] if rf.chromium() is None else []
    assert rf.main(["--from", str(demo_dir), "--figures", str(target), *no_browser]) == 0
    return target


def _md_rows(text: str) -> list[list[str]]:
    """Body rows of every markdown table in ``text``."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return [r for r in rows if r and r[0] not in ("layer", "language", "method", "region", "lang")]


def test_plots_are_the_demos_own(demo_dir, figures):
    for name, src in rf.PLOTS.items():
        data = (figures / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), name
        assert data == (demo_dir / src).read_bytes(), name


@pytest.mark.skipif(rf.chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_explorer_screenshot(figures):
    """explorer.png: a screenshot of the report's layer explorer (a real PNG of a laptop-wide page,
    not a blank one)."""
    import struct
    import zlib

    data = (figures / "explorer.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert 900 <= width <= 1280 and height >= 200, (width, height)
    raw = b"".join(data[i + 8:i + 8 + struct.unpack(">I", data[i:i + 4])[0]]
                   for i in _chunks(data, b"IDAT"))
    assert len(set(zlib.decompress(raw)[:200_000])) > 20  # many colours: the grid, not an empty box
    assert "explorer.png" in (figures / "README.md").read_text()


def _chunks(data: bytes, kind: bytes) -> list[int]:
    """Offsets of the PNG chunks of one kind."""
    import struct

    out, i = [], 8
    while i < len(data):
        length = struct.unpack(">I", data[i:i + 4])[0]
        if data[i + 4:i + 8] == kind:
            out.append(i)
        i += 12 + length
    return out


def test_lens_table_matches_lens_csv(demo_dir, figures):
    with (demo_dir / "lens" / "lens.csv").open() as f:
        rows = list(csv.DictReader(f))
    text = (figures / "lens.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| layer"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["layer", "zh", "fr"]
    body = _md_rows(text)
    assert len(body) == 1 + 3  # embeddings + 3 decoder layers of the tiny model
    expect = {(r["input_lang"], int(r["layer"])): float(r["english_share"]) for r in rows}
    for row in body:
        layer = int(row[0])
        assert row[1:] == [f"{expect[('zh', layer)]:.2f}", f"{expect[('fr', layer)]:.2f}"]


def test_neuron_table_matches_summary(demo_dir, figures):
    with (demo_dir / "neurons" / "summary.csv").open() as f:
        total = {r["set"]: r for r in csv.DictReader(f) if r["kind"] == "all"}
    body = {r[0]: r for r in _md_rows((figures / "neurons.md").read_text())}
    assert set(body) == {"en", "zh", "fr", "mean"}
    for lang, r in total.items():
        assert body[lang][5] == r["count"]
        assert body[lang][6] == f"{100 * float(r['fraction_of_model']):.2f} %"
    assert "top 2 % of each layer" in (figures / "neurons.md").read_text()


def test_deactivation_and_enhance_tables(demo_dir, figures):
    assert (figures / "deactivation.md").read_text() == (demo_dir / "deactivation" / "table.md").read_text()
    body = _md_rows((figures / "enhance.md").read_text())
    assert [r[0] for r in body] == ["neurons", "random"]
    compare = json.loads((demo_dir / "enhance" / "compare.json").read_text())
    assert compare["rows"][0]["method"] == "neurons"
    head = (figures / "headline.md").read_text()
    for lang in ("en", "zh"):
        assert f"`{lang}` with its" in head
    assert "Enhancement, `neurons`" in head and "Enhancement, `random`" in head


def test_provenance_records_command_versions_and_time(demo_dir, figures):
    text = (figures / "README.md").read_text()
    run = json.loads((demo_dir / "run.json").read_text())
    assert f"python scripts/readme_figures.py --from {demo_dir} --figures {figures}" in text
    assert f"`{run['command']}`" in text
    assert f"| torch | {run['versions']['torch']} |" in text
    assert re.search(r"Demo compute time: \d+ s \(lens \d+ s, neurons \d+ s, deactivation \d+ s, enhance \d+ s\)",
                     text)
    assert "reused the finished demo folder" in text


def test_unfinished_or_missing_folder_is_a_clear_error(demo_dir, tmp_path, capsys):
    assert rf.main(["--from", str(tmp_path / "nope"), "--figures", str(tmp_path / "f")]) == 2
    assert "no demo folder" in capsys.readouterr().err
    partial = tmp_path / "partial"
    (partial / "lens").mkdir(parents=True)
    for name in ("lens.csv", "lens.json", "lens.png"):
        (partial / "lens" / name).write_bytes((demo_dir / "lens" / name).read_bytes())
    assert rf.main(["--from", str(partial), "--figures", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "not a finished demo folder" in err and "neurons/summary.csv" in err and "mwork demo --out" in err
    assert not (tmp_path / "f").exists()
    assert rf.main(["--from", str(demo_dir), "--quick"]) == 2


def test_screenshot_only_needs_a_lens_stage_and_touches_nothing_else(demo_dir, tmp_path, capsys):
    assert rf.main(["--screenshot-only", "--figures", str(tmp_path / "f")]) == 2
    assert "give --from DIR" in capsys.readouterr().err
    partial = tmp_path / "partial"
    (partial / "lens").mkdir(parents=True)
    (partial / "lens" / "lens.csv").write_bytes((demo_dir / "lens" / "lens.csv").read_bytes())
    assert rf.main(["--from", str(partial), "--screenshot-only", "--figures", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "no finished lens stage" in err and "lens/lens_explorer.json" in err
    assert not (tmp_path / "f").exists()


def test_demo_command():
    cmd = rf.demo_command(Path("runs/x"), quick=True, model=None)
    assert cmd[-4:] == ["demo", "--quick", "--out", "runs/x"]
    assert rf.demo_command(Path("o"), quick=False, model="m")[-5:] == ["demo", "--model", "m", "--out", "o"]


def test_readme_shows_only_files_the_script_writes():
    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"docs/figures/([\w.-]+)", readme))
    assert used, "README shows no generated figure"
    written = set(rf.PLOTS) | set(rf.TABLES) | set(rf.SCREENSHOTS) | {"README.md"}
    assert used <= written, used - written


def _readme_commands() -> list[str]:
    """Every ``mwork ...`` command line of README's bash blocks (continuations joined, $M set)."""
    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].replace("$M", "meta-llama/Llama-2-7b-hf").strip()
            if "mwork " in line:
                commands.append(line[line.index("mwork "):])
    return commands


@pytest.mark.parametrize("command", _readme_commands())
def test_readme_commands_parse(command):
    """Every command and option the README shows exists (argparse exits 2 on an unknown one)."""
    import shlex

    from mwork.cli import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])
    assert getattr(args, "func", None) is not None
