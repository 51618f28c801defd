"""The one registry helper behind spaces, targets, evaluators, strategies, predictors and data sets."""
from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest

from tritune.evaluators.data import DATASETS
from tritune.evaluators.registry import EVALUATORS
from tritune.predictors.registry import PREDICTORS
from tritune.search.strategies import STRATEGIES
from tritune.spaces.plugins import PluginGroup, Registry
from tritune.spaces.registry import SPACES
from tritune.targets.registry import TARGETS


class Widget:
    description = "a widget"

    def __init__(self, size: int = 1, label: str = "w") -> None:
        self.size, self.label = size, label


def test_every_part_uses_one_registry_with_its_own_group():
    groups = {r.group for r in (SPACES, TARGETS, EVALUATORS, STRATEGIES, PREDICTORS, DATASETS)}
    assert groups == {"tritune.spaces", "tritune.targets", "tritune.evaluators", "tritune.strategies",
                      "tritune.predictors", "tritune.datasets"}
    assert all(isinstance(r, Registry) for r in (SPACES, TARGETS, EVALUATORS, STRATEGIES, PREDICTORS, DATASETS))


def test_register_check_create_and_replace():
    reg: Registry = Registry("widget", "tritune.test-widgets", discover=lambda group: [])
    reg.register("w", Widget)
    assert reg.describe() == {"w": "a widget"} and "w" in reg and "x" not in reg
    built = reg.create("w", size=3)
    assert (built.size, built.label) == (3, "w")
    with pytest.raises(ValueError, match=r"widget w: unknown options \['colour'\]; allowed: size, label"):
        reg.create("w", colour="red")
    with pytest.raises(ValueError, match=r"widget w.size: '3' \(str\) not allowed; expected an integer"):
        reg.check("w", {"size": "3"})
    with pytest.raises(ValueError, match="widget: 'x' not allowed; allowed: w"):
        reg.get("x")
    assert reg.find("x") is None and reg.find(7) is None
    reg.register("w", lambda **kw: "replaced", "another")
    assert reg.create("w") == "replaced" and reg.describe() == {"w": "another"}
    reg.unregister("w")
    assert reg.describe() == {}
    with pytest.raises(ValueError, match="give exactly one of factory or loader"):
        reg.register("v")
    with pytest.raises(ValueError, match="is not callable"):
        reg.register("v", 5)  # type: ignore[arg-type]


def test_loader_runs_on_first_use_only():
    calls = []

    def load():
        calls.append(1)
        return Widget

    reg: Registry = Registry("widget", "tritune.test-widgets", field="widget kind", discover=lambda group: [])
    reg.register("lazy", loader=load, description="loaded late")
    assert reg.describe() == {"lazy": "loaded late"} and calls == []
    assert reg.create("lazy").size == 1 and reg.create("lazy", size=2).size == 2
    assert calls == [1]
    with pytest.raises(ValueError, match="widget kind: 'eager' not allowed; allowed: lazy"):
        reg.get("eager")


def test_python_only_options_are_refused_unless_trusted():
    reg: Registry = Registry("widget", "tritune.test-widgets", discover=lambda group: [])
    reg.register("w", Widget, python_only={"label": "set it in Python"})
    with pytest.raises(ValueError, match=r"widget w.label: not accepted from a file or the command line \(set it in Python\)"):
        reg.create("w", label="x")
    assert reg.create("w", trusted=True, label="x").label == "x"


def test_plugins_are_listed_without_import_and_accepted_or_refused(tmp_path, monkeypatch):
    module = "tritune_test_plugin_widgets"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        class Good:
            description = "from a plug-in"
            def __init__(self, n: int = 0): self.n = n
        BAD = staticmethod(lambda: None)
        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint(name=n, value=f"{module}:{obj}", group="tritune.test-widgets")
           for n, obj in (("good", "Good"), ("bad", "BAD"), ("inert", "NOT_CALLABLE"), ("missing", "Nowhere"))]

    def accept(obj, where):
        if not isinstance(obj, type):
            raise ValueError(f"{where}: not a class")

    reg: Registry = Registry("widget", "tritune.test-widgets", accept=accept, discover=lambda group: eps)
    try:
        assert reg.describe()["good"] == f"plug-in {module}:Good"
        assert module not in sys.modules
        assert reg.create("good", n=4).n == 4 and module in sys.modules
        assert reg.describe()["good"] == "from a plug-in"  # registered once loaded
        with pytest.raises(ValueError, match="widget bad: not a class"):
            reg.get("bad")
        with pytest.raises(ValueError, match="is not callable"):
            reg.get("inert")
        with pytest.raises(ValueError, match="failed to load"):
            reg.get("missing")
    finally:
        sys.modules.pop(module, None)


def test_a_broken_environment_lists_only_builtins():
    def broken(group):
        raise RuntimeError("bad metadata")

    reg: Registry = Registry("widget", "tritune.test-widgets", discover=broken)
    reg.register("w", Widget)
    assert reg.describe() == {"w": "a widget"}
    assert isinstance(reg.plugins, PluginGroup)
