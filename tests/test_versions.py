"""The dependency policy: tested ranges with upper bounds (pyproject.toml), the exact tested
versions (constraints.txt) inside them, setup installing through them, and the import warning."""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import mwork.versions as versions

ROOT = Path(__file__).resolve().parents[1]
REACHED_INTO = {"torch", "transformers", "accelerate", "safetensors", "tokenizers", "peft", "lm-eval", "datasets",
                "gguf"}


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(line) for line in lines]


def _pins() -> dict[str, str]:
    text = (ROOT / "constraints.txt").read_text()
    return {m[1].lower().replace("_", "-"): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)$", text, re.M)}


def test_every_dependency_mwork_reaches_into_has_an_upper_bound():
    declared = {r.name.lower(): r for r in _requirements()}
    assert REACHED_INTO <= set(declared)
    for name in sorted(REACHED_INTO):
        ops = {s.operator for s in declared[name].specifier}
        assert ops & {"<", "<=", "==", "~="}, f"{name} has no upper bound in pyproject.toml"
        assert ops & {">=", "==", "~="}, f"{name} has no lower bound in pyproject.toml"


def test_the_constraints_file_pins_versions_inside_the_tested_ranges():
    pins = _pins()
    assert len(pins) > 50 and "torch" not in pins  # torch comes from setup.sh (CPU) or the user's GPU build
    checked = 0
    for req in _requirements():
        name = req.name.lower()
        if name in pins and req.specifier:
            assert req.specifier.contains(Version(pins[name]), prereleases=True), \
                f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {req.specifier}"
            checked += 1
    assert checked >= len(REACHED_INTO) - 1


def test_setup_and_ci_install_through_the_constraints_file():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r"pip install [^\n]*-c constraints\.txt[^\n]*-e \"\.\[default-model,lcb,test\]\"", setup)
    assert "scripts/setup.sh" in (ROOT / ".ci" / "run").read_text()
    newest = (ROOT / "scripts" / "test_newest.sh").read_text()
    assert "--upgrade-strategy eager" in newest and "pytest" in newest
    assert "scripts/test_newest.sh" in (ROOT / "README.md").read_text()


def test_a_version_outside_the_tested_range_warns_once(monkeypatch):
    monkeypatch.setattr(versions, "_warned", False)
    reqs = ["transformers>=5.24,<5.25", "numpy>=1.0", "pytest>=8; extra == 'test'", "not-installed-xyz>=1,<2"]
    monkeypatch.setattr(versions.metadata, "version",
                        lambda name: {"transformers": "5.25.0", "numpy": "2.0.0", "pytest": "1.0"}.get(name) or
                        (_ for _ in ()).throw(versions.metadata.PackageNotFoundError(name)))
    with pytest.warns(versions.UntestedVersionWarning, match=r"transformers 5\.25\.0 \(tested: <5\.25,>=5\.24\)"):
        assert versions.warn_untested_versions(reqs) == [("transformers", "5.25.0", "<5.25,>=5.24")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        versions.warn_untested_versions(reqs)  # once per process


def test_versions_inside_the_range_say_nothing(monkeypatch):
    monkeypatch.setattr(versions, "_warned", False)
    monkeypatch.setattr(versions.metadata, "version", lambda name: "5.24.3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert versions.warn_untested_versions(["transformers>=5.24,<5.26"]) == []
