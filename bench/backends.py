"""Backends the bench can run, each built from a checkpoint, or skipped with the reason it cannot run here."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Optional

import numpy as np
import torch

from wmoe.contract import OUTPUT_NAMES, EngineSidecar, ModelMeta, read_onnx_contract

from .backend_names import ALL_BACKENDS  # noqa: F401 - torch-free, for the command line
from .backend_names import MATMUL_PRECISION  # noqa: F401
from .backend_names import RUNTIME_PREFIX

if TYPE_CHECKING:
    from wmoe.kernels.dispatch import Kernels


class Skip(Exception):
    """The backend cannot run on this machine; the message says why."""


@dataclass
class Backend:
    name: str
    run: Callable[[np.ndarray], Dict[str, np.ndarray]]  # the model input (see meta) -> outputs
    device: str
    sync: Callable[[], None] = lambda: None
    #: the contract of the exported file this backend runs (its ONNX metadata or engine sidecar): what it takes,
    #: normalized images (N,3,S,S) float32 or uint8 camera frames (N,H,W,3), and at which size. None: a PyTorch
    #: backend, which takes images at the bench size.
    meta: Optional[ModelMeta] = None
    description: str = ""  # what runs (library, version, precision, hint), for the results


def _torch_backend(model, name: str, device: str, dtype: torch.dtype, compile_: bool = False,
                   kernels: "Kernels | str" = "reference") -> Backend:
    """The runtime's torch backend (:class:`wmoe.torch_backend.TorchBackend`) on a model. ``kernels``: the model's
    kernel choice (``wmoe.kernels.Kernels``) for this backend's calls only. PyTorch baselines run the PyTorch
    references (eager is the baseline the fused kernels are measured against); ``torch-triton`` forces the Triton
    kernels. Set per call so one backend never changes what another measures (several backends may share one model
    object)."""
    from wmoe.torch_backend import TorchBackend
    be = TorchBackend(model, device=device, dtype=dtype, compile=compile_, kernels=kernels)
    # meta None: a PyTorch backend takes images at the bench size (not the size of an exported file's contract)
    return Backend(name, be.run, device, be.sync, description=be.description)


def _export(model_factory: Callable[[], torch.nn.Module], workdir: Optional[Path],
            export: Optional[Callable[[], Path]]) -> Path:
    if export is not None:
        return export()
    from wmoe.export.onnx_export import export_onnx
    wd = Path(workdir or tempfile.mkdtemp(prefix="wmoe-bench-"))
    return export_onnx(model_factory(), wd / "model.onnx")


def make_backend(name: str, model_factory: Callable[[], torch.nn.Module], *, onnx_path: Optional[Path] = None,
                 engine_path: Optional[Path] = None, aoti_path: Optional[Path] = None, allow_compile: bool = False,
                 workdir: Optional[Path] = None, qdq_path: Optional[Path] = None,
                 export: Optional[Callable[[], Path]] = None) -> Backend:
    """Backend ``name``; ONNX backends run ``onnx_path`` (else the ONNX ``export()`` gives, else one exported
    here)."""
    cuda = torch.cuda.is_available()
    if name == "torch-fp32":
        return _torch_backend(model_factory(), name, "cuda" if cuda else "cpu", torch.float32)
    if name in ("torch-fp16", "torch-bf16"):
        if not cuda:
            raise Skip("reduced-precision PyTorch inference is benchmarked on CUDA only")
        return _torch_backend(model_factory(), name, "cuda", torch.float16 if name == "torch-fp16" else torch.bfloat16)
    if name == "torch-compile":
        if not (cuda or allow_compile):
            raise Skip("torch.compile on the CPU takes minutes to compile; pass --backends torch-compile to force")
        return _torch_backend(model_factory(), name, "cuda" if cuda else "cpu", torch.float32, compile_=True)
    if name == "torch-triton":
        if not cuda:
            raise Skip("compiled Triton kernels need a CUDA device")
        # both fused stages: the whole WCMA (Eq. 5-7) and the MoE path
        return _torch_backend(model_factory(), name, "cuda", torch.float16, kernels="triton")
    if name == "ort-qdq":  # ONNX Runtime's CPU provider executes the Q/DQ graph (int8 and fp8)
        if qdq_path is None:
            raise Skip("no --qdq model given (make one with wmoe export quantize)")
        onnx_path = qdq_path
    if name.startswith("ort-"):  # ONNX Runtime, the runtime's backend opened through its registry
        import onnxruntime as ort

        from wmoe.runtime.registry import open_backend
        from wmoe.runtime.session import PROVIDERS
        key = {"ort-cpu": "cpu", "ort-qdq": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}[name]
        provider = PROVIDERS[key]
        if provider not in ort.get_available_providers():
            raise Skip(f"{provider} not available (installed: {ort.get_available_providers()}; "
                       f"pip install onnxruntime-gpu)")
        if onnx_path is None:
            onnx_path = _export(model_factory, workdir, export)
        be = open_backend(onnx_path, key, trt_cache_dir=Path(workdir) / "ort-trt" if workdir else None)
        return Backend(name, be.run, "cpu" if key == "cpu" else "cuda", meta=be.meta,
                       description=f"onnxruntime {ort.__version__} {provider}")
    if name.startswith("ov-cpu-"):  # OpenVINO on the CPU, the runtime's backend, precision asked explicitly
        try:
            from wmoe.runtime.openvino_backend import cpu_capabilities
            caps = cpu_capabilities()
        except ImportError as e:
            raise Skip(f"OpenVINO is not installed ({e}): pip install 'wmoe[openvino]'")
        prec = name.rsplit("-", 1)[1]
        if prec == "bf16" and "BF16" not in caps:
            raise Skip(f"this CPU has no bf16 (OpenVINO capabilities: {', '.join(caps)})")
        if prec == "int8":
            if qdq_path is None:
                raise Skip("no --qdq model given (make one with wmoe export quantize --high-precision fp32)")
            onnx_path = qdq_path
        elif onnx_path is None:
            onnx_path = _export(model_factory, workdir, export)
        from wmoe.runtime.registry import open_backend
        # the gate is what the bench measures: the backend runs the precision asked, gated or not
        ovb = open_backend(onnx_path, "openvino", precision=prec, batch=1, allow_ungated=True,
                           cache_dir=Path(workdir) / "openvino" if workdir else None)
        return Backend(name, ovb.run, "cpu", meta=ovb.meta, description=getattr(ovb, "description", ""))
    if name == "trt-engine":
        if engine_path is None:
            raise Skip("no --engine given (build one with wmoe export trt on the target GPU)")
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise Skip("tensorrt is not installed (pip install tensorrt cuda-python)")
        from wmoe.runtime.registry import open_backend
        be = open_backend(engine_path, "tensorrt")
        return Backend(name, be.run, "cuda", meta=be.meta)
    if name == "aoti":
        if aoti_path is None:
            raise Skip("no --aoti package given (build one with wmoe export aoti; compiling takes minutes)")
        dev = "cuda" if cuda else "cpu"
        runner = torch._inductor.aoti_load_package(str(aoti_path))

        @torch.no_grad()
        def run(x: np.ndarray) -> Dict[str, np.ndarray]:
            s, m, t = runner(torch.from_numpy(x).to(dev))
            return {name: v.float().cpu().numpy() for name, v in zip(OUTPUT_NAMES, (s, m, t))}
        return Backend(name, run, dev, torch.cuda.synchronize if cuda else (lambda: None))
    if name.startswith(RUNTIME_PREFIX):  # any other provider of the runtime's registry, on the exported ONNX
        from wmoe.runtime.registry import open_backend
        if onnx_path is None:
            onnx_path = _export(model_factory, workdir, export)
        be = open_backend(onnx_path, name[len(RUNTIME_PREFIX):])
        return Backend(name, be.run, "cpu", meta=be.meta, description=getattr(be, "description", ""))
    raise ValueError(f"unknown backend {name!r}; choose from {ALL_BACKENDS}")


def onnx_meta(path: Path) -> ModelMeta:
    """The model contract of an exported ONNX (its ``wmoe.*`` metadata, checked against its graph)."""
    return read_onnx_contract(path)


def engine_meta(path: Path) -> ModelMeta:
    """The model contract of a TensorRT engine, from its sidecar (``wmoe export trt`` copies the ONNX's metadata
    there): image size, input kind (``images`` or ``frames``) and frame size."""
    return EngineSidecar.read(EngineSidecar.path_for(path)).model_meta
