"""mwork.registry.Registry: the one way adapters, methods, tasks and results kinds are found by name."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from mwork.registry import BrokenEntryPoint, Registry, UnknownName

GROUP = "mwork.test_registry_plugins"


class Thing:
    pass


def test_register_get_names_and_contains():
    reg: Registry[object] = Registry("widget")
    a, b = Thing(), Thing()
    assert reg.register("a", a) is a and reg.register("b", b) is b
    assert reg.get("a") is a and reg["b"] is b
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and len(reg) == 2
    assert "a" in reg and "c" not in reg and reg.values() == [a, b] and reg.items() == [("a", a), ("b", b)]
    assert reg.peek("a") is a and reg.peek("c") is None
    with pytest.raises(ValueError, match="non-empty name"):
        reg.register("", Thing())


def test_duplicates_are_refused_unless_replace():
    reg: Registry[object] = Registry("widget")
    a, b = Thing(), Thing()
    reg.register("a", a)
    reg.register("a", a)  # the same object again is no duplicate (a decorator run twice)
    with pytest.raises(ValueError, match=r"a widget named 'a' is already registered \(Thing\); pass replace=True"):
        reg.register("a", b)
    assert reg.get("a") is a  # nothing changed by the refusal
    assert reg.register("a", b, replace=True) is b and reg.get("a") is b and reg.names() == ["a"]


def test_unknown_name_names_the_known_ones():
    reg: Registry[int] = Registry("widget")
    reg.register("one", 1)
    reg.register("two", 2)
    with pytest.raises(UnknownName) as info:
        reg.get("three")
    assert str(info.value) == "unknown widget 'three'; known: one, two"
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)  # bad input, and a lookup
    assert Registry("gadget").pop("x", None) is None
    with pytest.raises(UnknownName, match="unknown gadget 'x'; known: none"):
        Registry("gadget").get("x")
    custom = Registry("method", unknown="unknown {what} {name!r}; methods: {known}",
                      duplicate="{name!r} is taken by {old}")
    custom.register("m", 1)
    with pytest.raises(ValueError, match="^unknown method 'z'; methods: m$"):
        custom.get("z")
    with pytest.raises(ValueError, match="^'m' is taken by int$"):
        custom.register("m", 2)


def test_pop_and_copy_are_independent():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)
    other = reg.copy()
    other.register("b", 2)
    assert reg.names() == ["a"] and other.names() == ["a", "b"]
    assert other.pop("b") == 2 and other.pop("b", None) is None and other.names() == ["a"]
    with pytest.raises(UnknownName, match="unknown widget 'b'"):
        other.pop("b")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Fake installed packages: a module on sys.path and entry points of GROUP that name it.
    Returns a function that sets the entry points; counts the reads of the group."""
    (tmp_path / "fake_registry_plugin.py").write_text(
        "class Gizmo:\n    name = 'gizmo'\n\nclass Doohickey:\n    name = 'doohickey'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_registry_plugin", raising=False)
    state = {"eps": [], "reads": 0}
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        if kw.get("group") != GROUP:
            return real(**kw)
        state["reads"] += 1
        return importlib.metadata.EntryPoints(state["eps"])

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    def install(**named):
        state["eps"] = [importlib.metadata.EntryPoint(name, value, GROUP) for name, value in named.items()]
        return state

    install.folder = tmp_path
    return install


def test_entry_points_are_read_lazily_once(plugins):
    state = plugins(gizmo="fake_registry_plugin:Gizmo")
    reg: Registry[type] = Registry("widget", GROUP)
    reg.register("builtin", Thing)
    assert state["reads"] == 0  # registering reads nothing
    assert reg.get("builtin") is Thing and state["reads"] == 0  # a registered name needs no plugins
    gizmo = reg.get("gizmo")
    assert gizmo.__name__ == "Gizmo" and gizmo.__module__ == "fake_registry_plugin"
    assert reg.names() == ["builtin", "gizmo"] and "gizmo" in reg and state["reads"] == 1
    with pytest.raises(UnknownName, match="unknown widget 'nope'; known: builtin, gizmo"):
        reg.get("nope")
    assert state["reads"] == 1  # once, even after an unknown name


def test_a_name_registered_in_code_wins_and_on_entry_point_decides(plugins):
    plugins(gizmo="fake_registry_plugin:Gizmo", other="fake_registry_plugin:Doohickey")
    reg: Registry[type] = Registry("widget", GROUP)
    reg.register("gizmo", Thing)
    assert reg.names() == ["gizmo", "other"] and reg.get("gizmo") is Thing
    seen = []
    by_attr: Registry[type] = Registry("widget", GROUP, on_entry_point=lambda obj: seen.append(obj)
                                       or by_attr.register(obj.name, obj))
    assert by_attr.names() == ["gizmo", "doohickey"] and [c.__name__ for c in seen] == ["Gizmo", "Doohickey"]


def test_a_broken_entry_point_is_reported_with_its_name(plugins):
    state = plugins(gizmo="fake_registry_plugin:Gizmo", broken="no_such_module_for_mwork_tests:Thing",
                    missing="fake_registry_plugin:NotThere")
    reg: Registry[type] = Registry("widget", GROUP)
    with pytest.raises(BrokenEntryPoint) as info:
        reg.names()
    msg = str(info.value)
    assert isinstance(info.value, ImportError)  # the CLI's one-line error, no traceback
    assert "widget entry point 'broken' = 'no_such_module_for_mwork_tests:Thing'" in msg
    assert "ModuleNotFoundError" in msg and "'missing' = 'fake_registry_plugin:NotThere'" in msg
    assert f"group {GROUP!r}" in msg and "Fix or uninstall" in msg and "gizmo" not in msg
    assert reg.peek("gizmo") is not None  # the good ones are registered
    with pytest.raises(BrokenEntryPoint, match="'broken'"):  # not silently skipped the second time
        reg.get("other")
    plugins(gizmo="fake_registry_plugin:Gizmo")  # the broken packages are uninstalled
    assert reg.names() == ["gizmo"] and state["reads"] == 3


def test_an_entry_point_that_registers_badly_is_reported(plugins):
    plugins(gizmo="fake_registry_plugin:Gizmo")

    def refuse(obj):
        raise TypeError(f"{obj.__name__} is not a widget")

    reg: Registry[type] = Registry("widget", GROUP, on_entry_point=refuse)
    with pytest.raises(BrokenEntryPoint, match="'gizmo' .*TypeError: Gizmo is not a widget"):
        reg.get("gizmo")


def test_the_project_registries_use_it(plugins, monkeypatch):
    """Each of mwork's registries is a Registry, and a training method comes in by entry point."""
    from mwork.experiments import training_methods
    from mwork.models import adapters
    from mwork.neurons import methods
    from mwork.report import registry as report_registry
    from mwork.tasks import registry as tasks

    for reg in (adapters.REGISTRY, training_methods.REGISTRY, methods._METHODS, tasks.TASKS, report_registry._KINDS):
        assert isinstance(reg, Registry)
    assert adapters.REGISTRY.group == "mwork.adapters" and methods._METHODS.group == "mwork.detection_methods"
    with pytest.raises(ValueError, match="unknown method 'nope'; choose from neurons, random, lora, full"):
        training_methods.get_method("nope")
    (plugins.folder / "fake_training_plugin.py").write_text(
        "from mwork.experiments.training_methods import FullMethod\n\n"
        "class Again(FullMethod):\n    name = 'again_test'\n", encoding="utf-8")
    monkeypatch.delitem(sys.modules, "fake_training_plugin", raising=False)
    plugins(again="fake_training_plugin:Again")
    fresh = Registry(training_methods.REGISTRY.what, GROUP, on_entry_point=training_methods._register_plugin)
    monkeypatch.setattr(training_methods, "REGISTRY", fresh)
    assert training_methods.get_method("again_test").__name__ == "Again"
    assert training_methods.method_names() == ("again_test",)
