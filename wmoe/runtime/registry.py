"""The one list of inference backends: which module runs which model file on which provider. No torch.

:meth:`wmoe.runtime.Runtime.open` picks the backend here by the file's suffix and ``provider=``, and imports its
module only then (a string ``"module:Class"``), so ``import wmoe.runtime`` stays light and the torch backend (a
training checkpoint scored in PyTorch, :mod:`wmoe.torch_backend`) lives outside the runtime's torch-free import
closure. Everything else that lists backends — the CLIs' ``--provider`` choices, the app's and calibration's "is this
an exported model" tests, the bench — reads this table.

Adding a backend touches two files: its module (a class following :class:`Backend`) and one :class:`BackendSpec`
line in :data:`BACKENDS` (``tests/test_inference_surface.py`` holds the tree to that).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Protocol, Tuple, Union, runtime_checkable

import numpy as np

from ..contract import ContractError, ModelMeta
from ..errors import MissingDependencyError


@runtime_checkable
class Backend(Protocol):
    """What the runtime needs of a backend: the model's contract, one batched call, and a close.

    ``run(x)`` takes the model input its ``meta`` describes — normalized float32 images (N,3,S,S) or uint8 RGB frames
    (N,H,W,3) — and returns ``{"scores": (N,), "maps": (N,S,S), "text_scores": (N,)}`` as numpy arrays (the
    contract's :data:`~wmoe.contract.OUTPUT_NAMES`). It judges nothing: verdicts and the NaN policy are the
    :class:`~wmoe.contract.Decision`'s, applied once by :class:`~wmoe.runtime.Runtime`."""

    meta: ModelMeta

    def run(self, x: Any) -> Dict[str, np.ndarray]: ...

    def close(self) -> None: ...


#: The arguments of :meth:`Runtime.open <wmoe.runtime.Runtime.open>` every backend may take (its ``takes``).
COMMON_OPTIONS: Tuple[str, ...] = ("provider", "threads", "allow_cpu_fallback")


@dataclass(frozen=True)
class BackendSpec:
    """One backend: ``target`` (``"module:Class"``, imported when a model is opened), the model-file ``suffixes``
    it runs, the ``providers`` it serves (empty: whatever ``provider=`` says, it has one way to run), which of
    :data:`COMMON_OPTIONS` its constructor takes, and the pip extra that installs what it imports."""

    name: str
    target: str
    suffixes: Tuple[str, ...]
    providers: Tuple[str, ...] = ()
    takes: Tuple[str, ...] = COMMON_OPTIONS
    extra: str = "runtime"
    description: str = ""

    def serves(self, suffix: str, provider: str) -> bool:
        return suffix.lower() in self.suffixes and (not self.providers or provider in self.providers)

    def load(self) -> type:
        """The backend class (its module imported now; a missing library is a :class:`MissingDependencyError`)."""
        module, _, cls = self.target.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            if isinstance(e, MissingDependencyError):
                raise
            raise MissingDependencyError(e.name or module, self.extra, f"the {self.name} backend ({self.target})"
                                         ) from None
        return getattr(mod, cls)

    def open(self, path: Path, provider: str, threads: int, allow_cpu_fallback: bool, **kw: Any) -> Backend:
        given = {"provider": provider, "threads": threads, "allow_cpu_fallback": allow_cpu_fallback}
        return self.load()(path, **{k: v for k, v in given.items() if k in self.takes}, **kw)


#: Every backend, in the order they are matched (first that serves the file and provider wins).
BACKENDS: Tuple[BackendSpec, ...] = (
    BackendSpec("onnxruntime", "wmoe.runtime.onnx_backend:OnnxBackend", (".onnx",), ("cpu", "cuda", "tensorrt"),
                description="ONNX Runtime: CPU, CUDA or its TensorRT execution provider"),
    BackendSpec("openvino", "wmoe.runtime.openvino_backend:OpenVinoBackend", (".onnx",), ("openvino",),
                takes=("threads",), extra="openvino", description="OpenVINO on the CPU (f32, bf16, int8)"),
    BackendSpec("tensorrt", "wmoe.runtime.trt_backend:TrtBackend", (".engine", ".plan"), takes=(), extra="trt",
                description="a TensorRT engine (wmoe export trt)"),
    BackendSpec("torch", "wmoe.torch_backend:TorchBackend", (".safetensors",), ("cpu", "cuda"),
                takes=("provider", "threads"), extra="train",
                description="a training checkpoint in PyTorch (what wmoe predict and wmoe eval run)"),
)


def suffixes(exported_only: bool = False) -> Tuple[str, ...]:
    """Every model-file suffix a backend runs (``exported_only``: without the torch checkpoint's)."""
    out = []
    for b in BACKENDS:
        if exported_only and b.name == "torch":
            continue
        out += [s for s in b.suffixes if s not in out]
    return tuple(out)


def providers(suffix: str = ".onnx") -> Tuple[str, ...]:
    """The ``provider=`` choices for a model file with ``suffix``, in table order (the CLIs' ``--provider``)."""
    out = []
    for b in BACKENDS:
        if suffix in b.suffixes:
            out += [p for p in b.providers if p not in out]
    return tuple(out)


def provider_help(suffix: str = ".onnx") -> str:
    """What each ``provider=`` choice for a ``suffix`` file runs, in one line (the CLIs' ``--provider`` help)."""
    return "; ".join(f"{', '.join(b.providers)}: {b.description} (pip install 'wmoe[{b.extra}]')"
                     for b in BACKENDS if suffix in b.suffixes and b.providers)


def find_backend(path: Union[str, Path], provider: str = "cpu") -> BackendSpec:
    """The backend that runs ``path`` on ``provider``; a :class:`ContractError` naming the file otherwise."""
    suffix = Path(path).suffix.lower()
    for b in BACKENDS:
        if b.serves(suffix, provider):
            return b
    if suffix not in suffixes():
        raise ContractError(f"{path}: unknown model type (expected {', '.join(suffixes())})")
    raise ContractError(f"{path}: no backend runs {suffix} files on provider {provider!r} "
                        f"(choose from {', '.join(providers(suffix))})")


def open_backend(path: Union[str, Path], provider: str = "cpu", threads: int = 0, allow_cpu_fallback: bool = False,
                 **kw: Any) -> Backend:
    """Open ``path`` with the backend :func:`find_backend` picks (``kw``: that backend's own options)."""
    return find_backend(path, provider).open(Path(path), provider, threads, allow_cpu_fallback, **kw)


def backend_name(backend: Any) -> Optional[str]:
    """The registry name of a backend object (None when it is not one of :data:`BACKENDS`)."""
    target = f"{type(backend).__module__}:{type(backend).__name__}"
    return next((b.name for b in BACKENDS if b.target == target), None)
