"""TensorRT engine build from the exported ONNX (TensorRT Python API), with a JSON sidecar beside the engine.

Written against TensorRT 10.x / 11 documented APIs: ``trt.Builder``, ``OnnxParser`` (every parser error printed),
one optimization profile per declared batch range, a timing cache reused across builds. TensorRT 11 networks are
strongly typed (no precision flags): reduced precision must come from the ONNX itself (``--precision fp16`` export);
TensorRT 10 takes the builder flags. Where TensorRT is not installed, :data:`INSTALL_HINT` says what to install.
Every TensorRT call here is type-checked against tensorrt-stubs (tests/test_typecheck.py) and executed against the
generated TensorRT double for 10.9 and 11.4 (tests/test_trt_double.py, tests/test_trt_dry_run.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple, TypeVar, Union

from wmoe.atomic import atomic_path
from wmoe.contract import (INPUT_FRAMES, QUANTIZED_PRECISIONS, EngineSidecar, ModelMeta, major_minor,
                           read_onnx_contract, sha256_file, wmoe_metadata)
from wmoe.errors import ExportError
from wmoe.onnx_meta import read_onnx_metadata

INSTALL_HINT = ("TensorRT is not installed. On x86-64: pip install 'wmoe[trt]' (CUDA 12 drivers; pip install tensorrt "
                "cuda-python also works) or 'wmoe[trt-cu13]' (CUDA 13); on Jetson (JetPack 6): apt install "
                "python3-libnvinfer (ships with JetPack) and pip install cuda-python")


def require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ExportError(INSTALL_HINT) from e
    return trt


def parse_batch(spec: str) -> List[Tuple[int, int, int]]:
    """``"1:8:32"`` -> [(1, 8, 32)] (min:opt:max); several ranges comma-separated: ``"1:1:1,8:16:32"``."""
    ranges = []
    for part in spec.split(","):
        bits = part.strip().split(":")
        if len(bits) == 1:
            bits = bits * 3
        if len(bits) != 3 or not all(b.isdigit() for b in bits):
            raise ValueError(f"batch range {part!r}: expected MIN:OPT:MAX, e.g. 1:8:32")
        lo, opt, hi = map(int, bits)
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"batch range {part!r}: need 1 <= MIN <= OPT <= MAX")
        ranges.append((lo, opt, hi))
    return ranges


def plan_flavor(meta: ModelMeta, tensorrt_version: str, checkpoint: Optional[Union[str, Path]] = None
                ) -> Tuple[str, Optional[str]]:
    """``(flavor to build, message)``: a plugin-flavor ONNX needs TensorRT >= 10.9 (AOT Python plugins); older
    TensorRT (JetPack 6 ships 10.3) builds the portable flavor instead, re-exported from ``checkpoint``."""
    from .trt_plugins import trt_version_ok
    flavor = meta.flavor
    if flavor != "plugin" or trt_version_ok(tensorrt_version):
        return flavor, None
    if checkpoint is None:
        raise ExportError(f"TensorRT {tensorrt_version} is older than 10.9 and cannot run the plugin flavor's AOT "
                          "plugins: pass --checkpoint CKPT to build the portable flavor instead, or export it with "
                          "wmoe export onnx CKPT --flavor portable")
    return "portable", (f"TensorRT {tensorrt_version} < 10.9 has no AOT Python plugins: building the portable "
                        f"flavor instead (re-exported from {checkpoint})")


#: ModelMeta fields that may differ between a plugin-flavor ONNX and its portable re-export: everything else is the
#: model's contract with its users (input kind, frame size, image size, preprocessing, precision, decision, config,
#: checkpoint) and must come through unchanged.
_FLAVOR_FIELDS = ("flavor", "exporter", "version")


def portable_fallback(onnx_path: Union[str, Path], checkpoint: Union[str, Path], out: Union[str, Path]) -> Path:
    """Re-export the portable flavor of a plugin-flavor ONNX from its checkpoint, keeping the whole contract: a
    frames-input model stays frames-input at its frame size, and the threshold, pixel threshold and calibration
    record come along. A checkpoint other than the one the ONNX was exported from is refused (its SHA-256 is in
    the metadata), and the re-export is checked field by field against the original contract. Needs torch and the
    model (``wmoe[export]``): the plugin flavor cannot be turned into the portable one without them."""
    import dataclasses

    onnx_path, checkpoint = Path(onnx_path), Path(checkpoint)
    src = read_onnx_contract(onnx_path)
    if not checkpoint.is_file():
        raise ExportError(f"{checkpoint}: no such checkpoint (needed to re-export {onnx_path} as the portable flavor)")
    if src.checkpoint_sha256 and src.checkpoint_sha256 != sha256_file(checkpoint):
        raise ExportError(f"{checkpoint} is not the checkpoint {onnx_path} was exported from (its metadata names "
                          f"sha256 {src.checkpoint_sha256[:12]}...): pass that checkpoint to --checkpoint")
    from .onnx_export import export_onnx
    path = export_onnx(checkpoint, out, precision=src.precision, preprocess=src.input == INPUT_FRAMES,
                       frame_size=src.frame_size, decision=src.decision)
    got = read_onnx_contract(path)
    changed = [f.name for f in dataclasses.fields(ModelMeta)
               if f.name not in _FLAVOR_FIELDS and getattr(got, f.name) != getattr(src, f.name)]
    if changed:  # a guard: export_onnx gained a contract field this function does not pass on
        raise ExportError(f"the portable re-export {path} of {onnx_path} changed its contract ({', '.join(changed)})")
    return path


#: The oldest compute capability with tensor-core support for each Q/DQ precision (int8: Turing, Orin is 8.7;
#: fp8 E4M3: Ada 8.9 and Hopper 9.0).
QDQ_MIN_CC = {"int8": (7, 5), "fp8": (8, 9)}


def check_qdq_gpu(precision: str, requested: str, cc: Tuple[int, int], gpu_name: str, onnx_path: Path) -> None:
    """Refuse a Q/DQ build this GPU cannot run, or a ``--precision`` that contradicts the quantized file."""
    if requested != precision:
        raise ExportError(f"{onnx_path} is quantized to {precision} (Q/DQ): build it with --precision {precision}")
    need = QDQ_MIN_CC[precision]
    if tuple(cc) < need:
        hint = (" (use --precision int8: quantize with wmoe export quantize --precision int8)"
                if precision == "fp8" else "")
        raise ExportError(f"{gpu_name} (compute capability {cc[0]}.{cc[1]}) has no {precision} tensor cores: "
                          f"{precision} needs {need[0]}.{need[1]} or newer{hint}")


def build_engine(onnx_path: Union[str, Path], out: Union[str, Path], precision: str = "fp16",
                 batch: str = "1:8:32", workspace_gb: float = 4.0, timing_cache: Optional[str] = None,
                 kernels: Optional[Union[str, Path]] = None, checkpoint: Optional[Union[str, Path]] = None) -> Path:
    """Build ``out`` from ``onnx_path``; write ``out`` + ``.json`` sidecar atomically. Needs TensorRT and a GPU.

    ``kernels``: a ``wmoe.kernels.aot`` output directory for the plugin flavor (compiled for this GPU into
    ``<out>.kernels/`` when not given: that needs Triton and torch; a build from a compiled directory needs neither,
    as a portable build). ``checkpoint``: used to re-export the portable flavor when this TensorRT cannot run the
    plugins (needs torch and the model).
    """
    require_tensorrt()
    import tensorrt as trt  # a module-typed name: the type check follows every call below into the stubs
    onnx_path, out = Path(onnx_path), Path(out)
    raw = read_onnx_metadata(onnx_path)  # the wmoe.* entries go into the sidecar verbatim
    meta = read_onnx_contract(onnx_path)  # a graph contradicting its metadata: refused here
    precision_in = meta.precision
    ranges = parse_batch(batch)
    flavor, note = plan_flavor(meta, trt.__version__, checkpoint)
    if note:
        print(note, flush=True)
        assert checkpoint is not None  # plan_flavor only plans a re-export from a checkpoint it was given
        onnx_path = portable_fallback(onnx_path, checkpoint, out.with_suffix(".portable.onnx"))
        raw = read_onnx_metadata(onnx_path)
        meta = read_onnx_contract(onnx_path)
    if flavor == "plugin":
        from .trt_plugins import check_plugin_nodes
        _register_plugins(out, kernels)
        check_plugin_nodes(onnx_path, trt.get_plugin_registry())
    from wmoe.runtime.cuda_api import open_cuda
    cuda = open_cuda()
    try:
        gpu_name, (cc_major, cc_minor) = cuda.device_name(), cuda.compute_capability()
    finally:
        cuda.close()
    if precision_in in QUANTIZED_PRECISIONS:  # before parsing: a GPU without fp8 is refused at once
        check_qdq_gpu(precision_in, precision, (cc_major, cc_minor), gpu_name, onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = _ok(trt.Builder(logger), "Builder")
    major = major_minor(trt.__version__)[0]
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = _ok(builder.create_network(flags), "create_network")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        print(errors, flush=True)
        raise ExportError(f"TensorRT could not parse {onnx_path} ({parser.num_errors} errors):\n{errors}")
    config = _ok(builder.create_builder_config(), "create_builder_config")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision_in in QUANTIZED_PRECISIONS:  # explicit quantization: the Q/DQ nodes say what runs in int8/fp8
        if major < 11:  # TensorRT 10: allow the Q/DQ precision and fp16 for the layers kept in high precision
            config.set_flag(trt.BuilderFlag.INT8 if precision_in == "int8" else trt.BuilderFlag.FP8)
            config.set_flag(trt.BuilderFlag.FP16)
    elif major < 11:  # TensorRT 11: strongly typed networks, precision comes from the ONNX
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
    elif precision != precision_in:
        raise ExportError(f"TensorRT {trt.__version__} builds strongly typed networks: export the ONNX with "
                          f"--precision {precision} (this file is {precision_in})")
    cache_path = Path(timing_cache or out.with_suffix(".timing.cache"))
    cache = _ok(config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b""),
                f"create_timing_cache({cache_path})")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ExportError(f"{cache_path}: TensorRT refused this timing cache (made by another TensorRT version or "
                          "GPU?): delete it or pass --timing-cache with a new path")
    inp = network.get_input(0)
    shape = _dims(inp.shape)
    for lo, opt, hi in ranges:
        prof = _ok(builder.create_optimization_profile(), "create_optimization_profile")
        prof.set_shape(inp.name, trt.Dims([lo] + shape[1:]), trt.Dims([opt] + shape[1:]), trt.Dims([hi] + shape[1:]))
        # TensorRT validates a profile with bool(profile) (IOptimizationProfile.__bool__; there is no is_valid)
        if not bool(prof) or config.add_optimization_profile(prof) < 0:
            raise ExportError(f"TensorRT refused the optimization profile {lo}:{opt}:{hi} for input {inp.name} "
                              f"{shape}")
    sidecar = EngineSidecar(  # everything known before the (long) build, so nothing can fail after it
        engine=out.name, onnx_sha256=sha256_file(onnx_path), checkpoint_sha256=meta.checkpoint_sha256,
        precision=precision, tensorrt_version=trt.__version__, flavor=flavor, gpu_name=gpu_name,
        compute_capability=f"{cc_major}.{cc_minor}",
        inputs={inp.name: [-1] + shape[1:]},
        outputs={network.get_output(i).name: _dims(network.get_output(i).shape) for i in range(network.num_outputs)},
        batch_ranges=[list(r) for r in ranges], metadata=wmoe_metadata(raw),
    )
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    write_engine_and_sidecar(out, bytes(blob), sidecar)
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out


_T = TypeVar("_T")


def _dims(d: Any) -> List[int]:
    """A TensorRT ``Dims`` as a list (``Dims`` is indexable and sized; the stubs do not declare it iterable)."""
    return [int(d[i]) for i in range(len(d))]


def _ok(obj: Optional[_T], what: str) -> _T:
    """TensorRT's Python API returns None (and logs why) where the C++ API returns a null pointer."""
    if obj is None:
        raise ExportError(f"TensorRT {what} failed (see TensorRT's log above)")
    return obj


def write_engine_and_sidecar(out: Union[str, Path], engine: bytes, sidecar: EngineSidecar) -> Path:
    """Write the engine and its sidecar so that no failure leaves an engine without its own sidecar: both are
    written to temporary files first; then an older engine at ``out`` is removed, the sidecar renamed into place,
    and the engine last. A crash in between leaves at worst a sidecar without an engine ("engine missing")."""
    import os

    import hashlib
    from dataclasses import replace

    out = Path(out)
    sidecar = replace(sidecar, engine=out.name, engine_sha256=hashlib.sha256(engine).hexdigest())  # bound to bytes
    with atomic_path(out) as eng_tmp:  # outer: renamed last
        eng_tmp.write_bytes(engine)
        with atomic_path(EngineSidecar.path_for(out)) as side_tmp:  # inner: renamed first
            sidecar.write(side_tmp)
            EngineSidecar.read(side_tmp)  # what the runtime will read back
            if out.exists():
                os.unlink(out)  # the old engine must never meet the new sidecar
    return out


def _register_plugins(out: Path, kernels: Optional[Union[str, Path]]) -> None:
    """Compile (if needed) the AOT kernels for this GPU and register the plugins before parsing."""
    from wmoe.runtime.cuda_api import open_cuda

    from .trt_plugins import PLUGINS, KernelStore, driver_ptx_limit, register_plugins
    cuda = open_cuda()
    try:
        (cc_major, cc_minor), drv = cuda.compute_capability(), cuda.driver_version()
    finally:
        cuda.close()
    target = f"sm_{cc_major}{cc_minor}"
    kdir = Path(kernels) if kernels else out.with_suffix(".kernels")
    from wmoe.kernels.spec import AOT_TARGETS
    if not kernels and target not in AOT_TARGETS:
        raise ExportError(f"no AOT kernel target for {target} (have {sorted(AOT_TARGETS)}): build the portable "
                          "flavor")
    if not (kdir / "manifest.json").is_file():
        names = [p.kernel for p in PLUGINS.values()]
        _require_kernel_compiler(kdir, target, names)
        from wmoe.kernels.aot import compile_all
        print(f"compiling the Triton kernels for {target} into {kdir}", flush=True)
        compile_all(kdir, targets=(target,), dtypes=("fp16", "fp32"), kernels=names)
    register_plugins(KernelStore(kdir), target, driver_ptx_limit(int(drv)))


def _require_kernel_compiler(kdir: Path, target: str, names: List[str]) -> None:
    """Compiling the plugin kernels needs Triton (the compiler and its ptxas) and torch (the kernel modules hold the
    launchers too); a build from a compiled directory (``--kernels DIR``) needs neither. One line when missing."""
    import importlib

    for module in ("triton", "torch"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ExportError(
                f"{kdir} holds no compiled plugin kernels (manifest.json) and compiling them needs Triton and torch "
                f"({module} is not installed): pip install 'wmoe[kernels,model]', or compile them on a machine that "
                f"has both (python -m wmoe.kernels.aot --out DIR --targets {target} --kernels {','.join(names)}), "
                "copy DIR here and pass --kernels DIR") from None
