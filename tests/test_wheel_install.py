"""``lm_eval --model mwork`` after a plain install: mwork's wheel (and its editable install) ships
``mwork-lm-eval.pth`` into site-packages (``mwork._build``), with no ``mwork eval
--install-lm-eval-plugin`` step.

Each test builds from a copy of the project (nothing written into the checkout), offline
(``--no-build-isolation --no-index``), into a new virtual environment that reuses this one's
installed packages through a ``.pth`` line (a plain path line: the ``.pth`` files of this
environment, its editable mwork and any installed plugin among them, are not run there), so mwork
is imported from what was installed into the new environment, checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from mwork.tasks.lm_eval_plugin import PTH_NAME, pth_line

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
PIP_OFFLINE = ["--no-index", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-q"]
TASK = "mwork_wheel_mc"


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE")}
    return {**env, **OFFLINE, "PYTHONNOUSERSITE": "1", "HF_DATASETS_CACHE": str(tmp / "hf_datasets"),
            "PIP_NO_INPUT": "1"}


def _run(args: list, tmp: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    run = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=tmp, env=_env(tmp),
                         timeout=timeout)
    assert run.returncode == 0, f"{args}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def _project_copy(tmp: Path) -> Path:
    """What a source distribution holds, copied: building never writes into the checkout."""
    dest = tmp / "project"
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dest


def _new_env(tmp: Path) -> tuple[Path, Path]:
    """A virtual environment (its python, its site-packages) that sees this one's packages."""
    env = tmp / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env], tmp)
    python = env / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_mwork_test_deps.pth").write_text("".join(f"{p}\n" for p in ours), encoding="utf-8")
    return python, site


def _write_task(folder: Path) -> None:
    folder.mkdir()
    rows = [{"question": "The capital of France is", "choices": [" Paris", " Berlin"], "label": 0},
            {"question": "Two plus two is", "choices": [" five", " four"], "label": 1},
            {"question": "The sky is", "choices": [" blue", " green"], "label": 0}]
    data = folder / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n", encoding="utf-8")


#: Python start-up in the new environment: the hook is in place, nothing heavy imported; then
#: mwork's file (from the new environment, not this checkout)
_PROBE = ("import json, sys; hooked = any(getattr(f, '__name__', '') == '_MworkLmEvalHook' for f in sys.meta_path); "
          "heavy = sorted(m for m in ('torch', 'lm_eval', 'mwork', 'transformers') if m in sys.modules); "
          "import mwork; print(json.dumps({'hooked': hooked, 'heavy': heavy, 'mwork': mwork.__file__}))")


def _probe(python: Path, tmp: Path) -> dict:
    return json.loads(_run([python, "-c", _PROBE], tmp).stdout.strip().splitlines()[-1])

#: what the ``lm_eval`` console script runs
_LM_EVAL = "import sys; from lm_eval.__main__ import cli_evaluate; sys.argv[0] = 'lm_eval'; sys.exit(cli_evaluate())"


@pytest.mark.slow
def test_lm_eval_model_mwork_after_a_plain_wheel_install(tmp_path):
    project = _project_copy(tmp_path)
    _run([sys.executable, "-m", "pip", "wheel", *PIP_OFFLINE, "-w", tmp_path / "wheels", project], tmp_path)
    (wheel,) = (tmp_path / "wheels").glob("mwork-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read(PTH_NAME).decode() == pth_line()  # at the wheel's root: site-packages
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        assert any(line.startswith(f"{PTH_NAME},") for line in zf.read(record).decode().splitlines())

    python, site = _new_env(tmp_path)
    _run([python, "-m", "pip", "install", *PIP_OFFLINE, "--ignore-installed", wheel], tmp_path)
    assert (site / PTH_NAME).read_text(encoding="utf-8") == pth_line()
    probe = _probe(python, tmp_path)
    assert probe["hooked"] and probe["heavy"] == [], probe
    assert Path(probe["mwork"]).resolve().is_relative_to(site.resolve()), probe

    _write_task(tmp_path / "tasks")
    out = tmp_path / "out"
    _run([python, "-c", _LM_EVAL, "--model", "mwork", "--model_args", "pretrained=tiny-random-llama",
          "--tasks", TASK, "--include_path", tmp_path / "tasks", "--limit", "2", "--device", "cpu",
          "--output_path", out], tmp_path, timeout=600)
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["results"][TASK]["acc,none"] is not None
    assert results["n-samples"][TASK]["effective"] == 2


def test_editable_install_ships_the_plugin_too(tmp_path):
    """``pip install -e .``: the editable wheel carries the same ``.pth`` (and points at the source)."""
    project = _project_copy(tmp_path)
    python, site = _new_env(tmp_path)
    _run([python, "-m", "pip", "install", *PIP_OFFLINE, "--ignore-installed", "-e", project], tmp_path)
    assert (site / PTH_NAME).read_text(encoding="utf-8") == pth_line()
    probe = _probe(python, tmp_path)
    assert probe["hooked"] and probe["heavy"] == [], probe
    assert Path(probe["mwork"]).resolve().is_relative_to((project / "src").resolve()), probe
