"""The one base class of wmoe's domain errors (standard library only: the torch-free runtime uses it too).

Every error about the user's files, inputs or options derives from :class:`WMoEError`. Its message is complete
on its own (it names the file, the option or the value and says what is wrong), so the command-line handler
prints it as one line and exits with :attr:`WMoEError.exit_code`; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import errno
import os
import re
from typing import Optional, Union


class WMoEError(Exception):
    """A problem with the user's input, files, options or environment: one clear line, no traceback needed."""

    #: the exit status every entry point (wmoe, wmoe-export, wmoe-bench) returns for this error
    exit_code = 2


class UsageError(WMoEError, ValueError):
    """Options that are each valid but do not fit together (``--tiny --pretrained``); names the options."""


class MissingDependencyError(WMoEError, ImportError):
    """An optional dependency is not installed; the message gives the command that installs it."""

    def __init__(self, module: str, extra: str, purpose: str, hint: str = "") -> None:
        self.module, self.extra = module, extra
        super().__init__(f"{purpose} needs the '{module}' package, which is not installed; "
                         f"install it with: pip install \"wmoe[{extra}]\"" + (f" ({hint})" if hint else ""))


class ContractError(WMoEError, ValueError):
    """A model file's wmoe contract (metadata, sidecar, spec) is missing or inconsistent; the message names it.
    Defined here so that the metadata readers (wmoe.onnx_meta) and the contract (wmoe.contract, which calls them)
    do not import each other; ``wmoe.contract.ContractError`` is the same class."""


class ExportError(WMoEError, RuntimeError):
    """Export or engine build failed; the message says what and where. Defined here (standard library only) so that
    building a TensorRT engine or a Triton repository from an ONNX imports no torch (on a Jetson the engine is built
    on the device, in JetPack's Python without torch). ``wmoe.export.onnx_export.ExportError`` is the same class."""


class QuantizeError(ExportError):
    """Quantization cannot proceed or its result fails the accuracy gate; the message says why."""


class CpuPrecisionError(ExportError):
    """The CPU precision cannot be measured (wrong model, no images); the message says why."""


class NonFiniteError(WMoEError, ArithmeticError):
    """A NaN or infinite value where a finite one is required (weights, scores, maps, a loss, an input)."""


class OutputError(WMoEError, OSError):
    """A file could not be written: the disk is full (ENOSPC, or EFBIG: the file-size limit, which ``prlimit
    --fsize`` and quotas give), or the folder is not writable (EACCES, EPERM, EROFS). The message names the path and
    what was kept; made by :func:`output_error`."""


#: errno values that mean "no room": a full disk, a file-size limit, a quota. One message for all of them.
DISK_FULL_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in ("ENOSPC", "EFBIG", "EDQUOT")) if e)
#: errno values that mean "not allowed to write here"
NO_WRITE_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in ("EACCES", "EPERM", "EROFS")) if e)


def write_failure(e: BaseException) -> Optional[str]:
    """What went wrong, in words, when ``e`` is a disk-full or permission failure of a write; None otherwise.

    Libraries that wrap the OS error in their own type (safetensors' ``SafetensorError: ... File too large (os
    error 27)``, protobuf, ONNX's C++ writer) are recognised by the errno in their message."""
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    if code is None:
        m = re.search(r"\(os error (\d+)\)|\[Errno (\d+)\]", str(e))
        if m:
            code = int(m.group(1) or m.group(2))
        elif "No space left on device" in str(e) or "File too large" in str(e):
            code = errno.ENOSPC
    if code in DISK_FULL_ERRNOS:
        return "the disk is full (no space left, or the file-size limit reached)"
    if code in NO_WRITE_ERRNOS:
        return ("the folder is read-only" if code == getattr(errno, "EROFS", None)
                else "permission denied")
    return None


def output_error(e: BaseException, path: Union[str, "os.PathLike[str]"], kept: str) -> Optional["OutputError"]:
    """An :class:`OutputError` for a disk-full or permission failure ``e`` while writing ``path`` (None for any
    other failure: the caller re-raises it). ``kept`` says what survives, e.g. "the previous file is kept"."""
    why = write_failure(e)
    if why is None:
        return None
    err = OutputError(f"cannot write {printable(path)}: {why}; {kept}")
    err.path, err.why = path, why  # for a writer of many files that says what the whole output kept
    return err


def printable(text: Union[str, "os.PathLike[str]", BaseException]) -> str:
    """Text (a path, a message) that any UTF-8 file or terminal accepts: undecodable bytes of a file name (a
    Latin-1 name on a UTF-8 system arrives as lone surrogates) become ``\\xNN`` escapes instead of crashing the
    writer."""
    s = str(text)
    try:
        return os.fsencode(s).decode("utf-8", "backslashreplace")
    except UnicodeError:  # a surrogate that no file name produced
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


class ProviderUnavailableError(WMoEError, RuntimeError):
    """An execution provider asked for by name (``--provider cuda``/``tensorrt``) cannot run here; the message names
    what is missing. Running elsewhere instead is opt-in (``--allow-cpu-fallback``), never silent."""
