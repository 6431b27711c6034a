"""Old module paths, kept importable for one release with a DeprecationWarning.

wmoe 0.1 had its modules side by side in ``wmoe/``; they now live in layer subpackages (``wmoe.model``,
``wmoe.training``, ``wmoe.evaluation``, ``wmoe.cli``; docs/architecture.md). A user's ``import wmoe.checkpoint`` or
``from wmoe.calibration import decide`` keeps working: this finder answers an old name with the module at its new
place (the same module object, so state and ``isinstance`` checks are shared) and warns once per name. Installed by
``wmoe/__init__.py``; the table is the one list of what moved (tests/test_layout.py imports every entry).
"""
import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Dict, Optional, Sequence

# old module (0.1) -> its module now. A package's submodules follow it (wmoe.metrics.image -> wmoe.evaluation...).
MOVED: Dict[str, str] = {
    "wmoe.backbone": "wmoe.model.backbone",
    "wmoe.ctds": "wmoe.model.ctds",
    "wmoe.wcma": "wmoe.model.wcma",
    "wmoe.samoe": "wmoe.model.samoe",
    "wmoe.config": "wmoe.model.config",
    "wmoe.preprocess": "wmoe.model.preprocess",
    "wmoe.checkpoint": "wmoe.model.checkpoint",
    "wmoe.train": "wmoe.training.train",
    "wmoe.losses": "wmoe.training.losses",
    "wmoe.checkpoint_set": "wmoe.training.checkpoint_set",
    "wmoe.optim_state": "wmoe.training.optim_state",
    "wmoe.distributed": "wmoe.training.distributed",
    "wmoe.expert_health": "wmoe.model.expert_health",
    "wmoe.evaluate": "wmoe.evaluation.evaluate",
    "wmoe.report": "wmoe.evaluation.report",
    "wmoe.decision_plot": "wmoe.evaluation.decision_plot",
    "wmoe.usage_plot": "wmoe.evaluation.usage_plot",
    "wmoe.calibration": "wmoe.evaluation.calibration",
    "wmoe.calibrate": "wmoe.evaluation.calibrate",
    "wmoe.metrics": "wmoe.evaluation.metrics",
    "wmoe.cli_config": "wmoe.cli.config",
    "wmoe.cli_run": "wmoe.cli.run",
    "wmoe.cli_types": "wmoe.cli.types",
}
REMOVAL = "wmoe 0.3"


def new_name(old: str) -> Optional[str]:
    """The current name of an old module path (or of a submodule of a moved package), else None."""
    if not old.startswith("wmoe.") or old.count(".") > 3:
        return None
    if old in MOVED:
        return MOVED[old]
    for o, n in MOVED.items():
        if old.startswith(o + "."):
            return n + old[len(o):]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, module: ModuleType):
        self.module = module

    def create_module(self, spec):  # the existing module, not a copy: one set of globals
        return self.module

    def exec_module(self, module) -> None:  # already executed under its new name
        pass


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves the 0.1 module paths in :data:`MOVED` to their modules now, with a DeprecationWarning."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; the old path is removed in {REMOVAL}", DeprecationWarning,
                      stacklevel=2)
        module = importlib.import_module(new)
        return importlib.machinery.ModuleSpec(fullname, _Alias(module),
                                              is_package=hasattr(module, "__path__"))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        # First, so that a moved package's submodules (wmoe.metrics.image) resolve to the one module object instead
        # of the path finder loading a second copy from the package's __path__ under the old name.
        sys.meta_path.insert(0, MovedModuleFinder())
