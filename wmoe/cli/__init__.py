"""The command line: the kit every entry point shares and the ``wmoe`` command.

``types`` (argument validators, "did you mean"), ``config`` (``--config FILE``/``--print-config``), ``run`` (one-line
errors, ``--version``/``--debug``, no empty output folder) — torch-free, also used by ``wmoe-camera``,
``wmoe-export`` and ``wmoe-bench`` — and ``commands`` (the ``wmoe`` command and its subcommands).
"""
import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # `from wmoe.cli import main` as in wmoe 0.1, when this package was one module; resolved lazily so that the
    # torch-free kit (wmoe.cli.run, .types) does not import every command.
    if name in ("main", "build_parser"):
        return getattr(importlib.import_module(__name__ + ".commands"), name)
    raise AttributeError(f"module 'wmoe.cli' has no attribute {name!r}")
