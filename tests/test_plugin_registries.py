"""Issue 21, item 7: tasks and report kinds are registries like the others (built-ins found where
they are defined, duplicates refused, plugins from entry points), and the U/G -> layers rule has
one home (``mwork.layer_regions``) that the lens, the deactivation grid and steering share."""

from __future__ import annotations

import importlib.metadata
import sys
from types import SimpleNamespace

import pytest

from mwork.layer_regions import region_layers
from mwork.registry import Registry


# ---- tasks ------------------------------------------------------------------------------------


def test_builtin_tasks_are_found_without_a_list():
    from mwork.tasks.registry import TASKS, list_tasks

    assert isinstance(TASKS, Registry) and TASKS.group == "mwork.tasks"
    assert list_tasks() == ["mgsm", "xcsqa", "xlsum", "xquad"] and list_tasks(False) == [
        "mgsm", "ppl", "xcsqa", "xlsum", "xquad"]


def test_a_duplicate_task_name_is_refused():
    from mwork.tasks.mgsm import MGSM
    from mwork.tasks.registry import get_task, register_task

    builtin = get_task("mgsm")
    with pytest.raises(ValueError, match=r"a task named 'mgsm' is already registered \(MGSM\); pass replace=True"):
        register_task(MGSM())
    assert get_task("mgsm") is builtin  # nothing changed by the refusal
    register_task(builtin)  # the same object again is no duplicate


# ---- report kinds -----------------------------------------------------------------------------


def test_a_duplicate_report_kind_is_refused():
    from mwork.report import ResultsKind, register_results_kind, results_kinds
    from mwork.report import registry

    lens = next(k for k in results_kinds() if k.name == "lens")
    other = ResultsKind("lens", "Another lens", lambda folder: False, lambda section: None)
    with pytest.raises(ValueError, match=r"a results kind named 'lens' is already registered"):
        register_results_kind(other)
    assert registry._KINDS.get("lens") is lens
    try:
        assert register_results_kind(other, replace=True) is other
    finally:
        register_results_kind(lens, replace=True)
    assert registry._KINDS.get("lens") is lens


def test_builtin_report_kinds_come_from_their_modules():
    from mwork.registry import import_modules
    from mwork.report import results_kinds

    modules = import_modules("mwork.report.kinds")
    assert {"lens", "neurons", "steering", "generic"} <= set(modules)
    names = {k.name for k in results_kinds()}
    assert {"lens", "latent", "tuned_lens", "neurons", "steer", "results"} <= names


def test_a_report_kind_from_an_entry_point_is_on_the_page(tmp_path, monkeypatch):
    from mwork.report import registry, render_report

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "fake_report_kind_plugin.py").write_text(
        "from mwork.report import ResultsKind\n\n"
        "def render(section):\n"
        "    rows = section.csv('probe.csv', required=('layer', 'accuracy'))\n"
        "    section.finding(f'The probe reaches {max(float(r[\"accuracy\"]) for r in rows)} accuracy.')\n\n"
        "PROBE = ResultsKind('probe_test', 'Language probe (plugin)', lambda folder: folder.has('probe.csv'), render,"
        " order=55)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.delitem(sys.modules, "fake_report_kind_plugin", raising=False)
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        if kw.get("group") != registry.ENTRY_POINT_GROUP:
            return real(**kw)
        return importlib.metadata.EntryPoints([importlib.metadata.EntryPoint(
            "probe_test", "fake_report_kind_plugin:PROBE", registry.ENTRY_POINT_GROUP)])

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_KINDS", registry._KINDS.copy(reread_entry_points=True))
    results = tmp_path / "results" / "probe"
    results.mkdir(parents=True)
    (results / "probe.csv").write_text("layer,accuracy\n0,0.5\n1,0.875\n", encoding="utf-8")
    html = render_report(tmp_path / "results").read_text(encoding="utf-8")
    assert "Language probe (plugin)" in html and "The probe reaches 0.875 accuracy." in html
    assert "probe_test" in [k.name for k in registry.results_kinds()]


# ---- U/G -> layers ------------------------------------------------------------------------------

# (layers, U, G) -> (understanding, task-solving, generation), computed by hand
CASES = {
    (4, 1, 1): ([0], [1, 2], [3]),
    (10, 2, 3): ([0, 1], [2, 3, 4, 5, 6], [7, 8, 9]),
    (24, 6, 4): ([0, 1, 2, 3, 4, 5], list(range(6, 20)), [20, 21, 22, 23]),
    (32, 8, 8): ([0, 1, 2, 3, 4, 5, 6, 7], list(range(8, 24)), [24, 25, 26, 27, 28, 29, 30, 31]),
}


@pytest.mark.parametrize("shape", sorted(CASES))
def test_the_three_call_sites_give_the_same_layers(shape):
    from mwork.experiments.deactivation.plan import layer_regions
    from mwork.experiments.steering.runner import _region_layers
    from mwork.lens.regions import RegionEstimate

    n, u, g = shape
    under, task, gen = CASES[shape]
    assert {k: list(v) for k, v in region_layers(n, u, g).items()} == {
        "understanding": under, "task-solving": task, "generation": gen}
    est = RegionEstimate(True, u, g, n, [], [], None, 0.5, 0.1, None, None)
    assert est.layer_regions() == {"understanding": under, "task_solving": task, "generation": gen}
    grid = {r.name: list(r.layers) for r in layer_regions(n, u, g)}
    assert grid == {"understanding": under, "task-solving attention": task, "task-solving FFN": task,
                    "generation": gen, "all layers": list(range(n))}
    for region, want in (("understanding", under), ("task-solving", task), ("generation", gen)):
        config = SimpleNamespace(region=region, layers=None, lens=None, understanding=u, generation=g)
        assert _region_layers(config, n) == want


def test_regions_that_do_not_fit_are_refused_in_one_place():
    from mwork.experiments.deactivation.plan import layer_regions
    from mwork.experiments.steering.runner import _region_layers

    for call in (lambda: region_layers(4, 3, 2), lambda: layer_regions(4, 3, 2),
                 lambda: _region_layers(SimpleNamespace(region="generation", layers=None, lens=None, understanding=3,
                                                        generation=2), 4)):
        with pytest.raises(ValueError, match=r"understanding \(3\) \+ generation \(2\) layers must be >= 0 and fit "
                                             r"in the model's 4 layers"):
            call()
    with pytest.raises(ValueError, match="must be >= 0"):
        region_layers(4, -1, 1)
