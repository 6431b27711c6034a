"""The one command-line error handler and parser conventions of ``wmoe``, ``wmoe-export``, ``wmoe-bench`` and
``wmoe-camera``.

- :class:`Parser`: a usage error is one line, ``PROG: error: argument --opt: what is wrong``, exit status 2.
- :func:`finish`: every (sub)command gets ``--debug`` (so it works after the subcommand too), every command that
  runs gets ``--config FILE`` and ``--print-config`` (:mod:`wmoe.cli.config`), and every option with a default
  shows it in ``--help``. It walks the whole tree, so subcommands that other modules register
  (``register(subparsers)``) get the same conventions without doing anything.
- :func:`standalone`: one subcommand tree as its own program (``wmoe-export onnx ...``, not
  ``wmoe-export export onnx ...``), with ``--version``.
- :func:`run`: parse, run, and turn every expected failure into one line and an exit status, identical through
  every entry point: :class:`~wmoe.errors.WMoEError` (its ``exit_code``), a missing optional package (the install
  command), an unreadable/unwritable path (the path and the reason), Ctrl-C (130). ``--debug`` shows the traceback.
  A command that fails leaves none of the output folders it would have created empty behind it.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from .. import __version__
from .config import add_config_options, apply_config, dump, resolved
from .types import output_dir, output_file, suggest
from ..errors import MissingDependencyError, WMoEError, printable

#: optional packages -> (extra of pyproject.toml, what needs them)
OPTIONAL_DEPS = {
    "onnx": ("export", "ONNX export"), "onnxscript": ("export", "ONNX export"),
    "onnxruntime": ("export", "running ONNX models"), "tensorrt": ("trt", "TensorRT"),
    "polygraphy": ("trt", "TensorRT parity checks"), "cuda": ("trt", "the TensorRT runtime"),
    "cv2": ("camera", "camera capture (OpenCV)"), "matplotlib": ("bench", "benchmark plots"),
    "triton": ("kernels", "the Triton kernels"),
}
#: top-level modules of the ``model`` extra (pyproject.toml): missing in a runtime-only install
MODEL_STACK = {"torch", "open_clip", "safetensors", "scipy", "sklearn", "skimage", "tqdm", "torchvision"}


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2) and a "did you mean" for a misspelt command or choice."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[name-defined] # noqa: F821
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")

    def _check_value(self, action: argparse.Action, value: object) -> None:
        # argparse's own message names the subcommand's dest ("argument export_command: invalid choice: 'onx'")
        # and suggests nothing (before Python 3.14's suggest_on_error)
        if action.choices is None or value in action.choices:
            return
        names = [str(c) for c in action.choices]
        what, arg = ("command", None) if isinstance(action, argparse._SubParsersAction) else ("choice", action)
        raise argparse.ArgumentError(arg, f"unknown {what} {value!r}{suggest(str(value), names)}; choose from "
                                          f"{', '.join(names)}")


def _subparsers(p: argparse.ArgumentParser) -> Iterator[Tuple[str, argparse.ArgumentParser]]:
    seen = set()
    for act in p._actions:
        if isinstance(act, argparse._SubParsersAction):
            for name, sp in act.choices.items():
                if id(sp) not in seen:  # aliases share a parser
                    seen.add(id(sp))
                    yield name, sp


def _show_defaults(p: argparse.ArgumentParser) -> None:
    for act in p._actions:
        if (not act.option_strings or act.default is None or act.default is False
                or act.default == argparse.SUPPRESS or act.help == argparse.SUPPRESS):
            continue
        if isinstance(act, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if act.help is None:
            act.help = "default: %(default)s"
        elif "%(default)" not in act.help and "default" not in act.help.lower():
            act.help += " (default: %(default)s)"


def finish(p: argparse.ArgumentParser, command: str = "wmoe") -> argparse.ArgumentParser:
    """Apply the conventions above to ``p`` and every subcommand below it; returns ``p``."""
    _show_defaults(p)
    if "--debug" not in p._option_string_actions:
        # SUPPRESS: a subcommand's --debug sets the flag, its absence does not reset the top-level one
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
    p.set_defaults(_command=command)
    subs = list(_subparsers(p))
    if not subs and "func" in p._defaults:  # a command that runs: --config FILE, --print-config
        add_config_options(p)
    for name, sp in subs:
        finish(sp, f"{command} {name}")
    return p


def _rename(p: argparse.ArgumentParser, old: str, new: str) -> None:
    if p.prog == old or p.prog.startswith(old + " "):
        p.prog = new + p.prog[len(old):]
    for act in p._actions:
        if isinstance(act, argparse._SubParsersAction) and act._prog_prefix.startswith(old):
            act._prog_prefix = new + act._prog_prefix[len(old):]
    for _, sp in _subparsers(p):
        _rename(sp, old, new)


def standalone(register: Callable[[argparse._SubParsersAction], None], command: str, prog: str
               ) -> argparse.ArgumentParser:
    """The ``command`` tree that ``register`` adds to ``wmoe``, as the program ``prog`` (``wmoe-export``)."""
    holder = Parser(prog="wmoe")
    register(holder.add_subparsers(dest="command", required=True))
    finish(holder)
    p = dict(_subparsers(holder))[command]
    _rename(p, f"wmoe {command}", prog)
    p.add_argument("--version", action="version", version=f"{prog} (wmoe) {__version__}")
    p.set_defaults(debug=False, command=command)
    return p


def describe(e: BaseException) -> Optional[Tuple[str, int]]:
    """(one-line message, exit status) for an expected failure; None for a bug (shown as a traceback)."""
    if isinstance(e, WMoEError):
        return printable(e), e.exit_code
    top = (getattr(e, "name", None) or "").split(".")[0] if isinstance(e, ModuleNotFoundError) else ""
    if top in MODEL_STACK:  # a runtime-only install (pip install "wmoe[runtime]") has no torch stack
        return (f"this command needs the model stack ({e.name} is not installed): pip install \"wmoe[model]\" "
                f"(scoring exported models needs only wmoe[runtime]: see wmoe-camera)"), 2
    if top in OPTIONAL_DEPS:
        extra, purpose = OPTIONAL_DEPS[top]
        return str(MissingDependencyError(top, extra, purpose)), 2
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror}: {printable(e.filename)}", 2
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", 130
    return None


def _one_line_warnings() -> None:
    warnings.formatwarning = lambda message, category, *a, **k: f"wmoe: warning: {printable(message)}\n"


def run(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> int:
    """Parse ``argv``, run the chosen command's ``func``, and report a failure as one line (see the module)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug, command = "--debug" in argv, parser.prog
    if not debug:
        _one_line_warnings()
    made: List[Path] = []
    code = 1
    try:
        apply_config(parser, argv)  # --config FILE: its values become the chosen command's defaults
        a = parser.parse_args(argv)  # inside: an option's check may import what a small install lacks
        command = getattr(a, "_command", command)
        chosen = _chosen(parser, a)
        a._resolved = dump(command, resolved(chosen, a))  # the command's options, resolved (wmoe train keeps them)
        if getattr(a, "print_config", False):
            print(a._resolved, end="")
            return 0
        made = _missing_output_folders(chosen, a)
        code = int(a.func(a) or 0)
        return code
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - sorted by describe(); bugs are re-raised
        found = None if debug else describe(e)
        if found is None:
            raise
        msg, code = found
        _close_progress_bars()
        print(f"{command}: error: {msg}", file=sys.stderr)
        return code
    finally:
        if code != 0:
            _remove_empty(made)


def _chosen(parser: argparse.ArgumentParser, a: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command that ``a`` runs."""
    return next((p for p in _tree(parser) if p._defaults.get("_command") == getattr(a, "_command", None)), parser)


def _missing_output_folders(chosen: argparse.ArgumentParser, a: argparse.Namespace) -> List[Path]:
    """For each output option (an :func:`~wmoe.cli.types.output_dir` / :func:`~wmoe.cli.types.output_file`) of
    the command that ``a`` runs: the topmost folder of its path that does not exist yet (the command may create it)."""
    made = []
    for act in chosen._actions:
        value = getattr(a, act.dest, None)
        if act.type not in (output_dir, output_file) or not isinstance(value, str):
            continue
        p = Path(value).absolute()
        p = p if act.type is output_dir else p.parent
        if p.exists():
            continue
        while not p.parent.exists():
            p = p.parent
        made.append(p)
    return made


def _remove_empty(folders: List[Path]) -> None:
    """Remove what a failed command left of ``folders`` (they did not exist before it) where nothing is inside."""
    for top in folders:
        if not top.is_dir():
            continue
        for d, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):  # deepest first
            try:
                os.rmdir(d)  # only an empty folder
            except OSError:
                pass


def _tree(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield p
    for _, sp in _subparsers(p):
        yield from _tree(sp)


def _close_progress_bars() -> None:
    """End any progress bar the failed command left open, so the error starts its own line."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - cosmetic only; the error line matters
            pass
