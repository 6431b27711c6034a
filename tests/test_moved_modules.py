"""wmoe 0.1's flat module paths still import, with a DeprecationWarning, as the same module objects (wmoe/moved.py);
the layer subpackages hold what the architecture page says they hold."""
import importlib
import sys
import warnings
from pathlib import Path

import pytest

from wmoe.moved import MOVED, new_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module_with_a_warning(old):
    new = importlib.import_module(MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        mod = importlib.import_module(old)
    assert mod is new
    assert not (ROOT / "wmoe" / (old.split(".", 1)[1] + ".py")).exists(), f"{old}: both places exist"


def test_a_moved_package_s_submodule_is_not_loaded_twice():
    new = importlib.import_module("wmoe.evaluation.metrics.image")
    sys.modules.pop("wmoe.metrics.image", None)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("wmoe.metrics.image")
    assert old is new
    assert new_name("wmoe.metrics.pixel") == "wmoe.evaluation.metrics.pixel"
    assert new_name("wmoe.runtime") is None and new_name("numpy") is None


def test_the_public_names_keep_working_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from wmoe.cli import main  # the old module's entry point (pyproject names wmoe.cli.commands:main)
        from wmoe.model import WMoECLIP  # the old module wmoe.model is the package now
        import wmoe
    from wmoe.cli.commands import main as commands_main
    from wmoe.model.wmoe_clip import WMoECLIP as network
    assert main is commands_main and WMoECLIP is network
    assert wmoe.WMoECLIP is network and wmoe.load_model.__module__ == "wmoe.model.checkpoint"


def test_the_flat_package_holds_no_layer_module():
    """What moved stays moved: a module of the model, training, evaluation or CLI layer beside wmoe/__init__.py
    fails here (e.g. a landing that recreated wmoe/train.py)."""
    flat = {p.stem for p in (ROOT / "wmoe").glob("*.py")}
    moved_back = sorted(flat & {o.split(".", 1)[1] for o in MOVED})
    assert not moved_back, f"flat modules that belong to a layer package: {moved_back}"
