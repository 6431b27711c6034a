"""A Triton Inference Server model repository for an exported WMoE-CLIP (``wmoe export triton``).

Layout (one model per backend; versions are numbered folders, the newest is served)::

    REPO/README.md                      docker run / perf_analyzer / client lines for this repository
    REPO/<name>/config.pbtxt            platform onnxruntime_onnx or tensorrt_plan (official containers)
    REPO/<name>/<version>/model.onnx    (or model.plan + model.json, the engine sidecar)
    REPO/<name>_python/config.pbtxt     backend python: the ONNX through wmoe.runtime inside the server
    REPO/<name>_python/<version>/model.py, model.onnx

The input is ``frames`` uint8 (N,H,W,3) RGB at one camera size (the export with in-graph preprocessing), so
clients send raw frames and every backend computes the same pixels. Per-image outputs (N,) are declared with
``dims: [1]`` and ``reshape: { shape: [] }``: Triton needs at least one dimension besides the batch. The model's
metadata (threshold, preprocessing, config, hashes) is copied into the config's ``parameters``, where a client
reads it with ``get_model_config``.

Only standard library here, plus ``onnx`` to read an ONNX signature; a checkpoint source imports the exporter.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from wmoe import __version__
from wmoe.atomic import atomic_path, atomic_write_text
from wmoe.contract import (INPUT_FRAMES, META_PREFIX, ContractError, EngineCompatError, EngineSidecar, ModelMeta,
                           read_onnx_contract)
from wmoe.folder_lock import FolderLock
from wmoe.runtime.triton_python import MODEL_FILE_PARAM, THREADS_PARAM, TritonPythonModel

from wmoe.errors import ExportError, OutputError, output_error

from . import repo_commit

BACKENDS = ("onnxruntime", "tensorrt", "python")
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.onnx"}
DEVICES = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
ENGINE_SUFFIXES = (".engine", ".plan")
#: the NGC release whose server (2.51) the Python-backend model was tested against (nvidia-pytriton's bundle)
DEFAULT_CONTAINER_TAG = "24.10"
PYTHON_MODEL_PY = (
    "# Written by wmoe export triton. Serves the ONNX in this folder through wmoe.runtime; the server's Python\n"
    "# needs the wmoe runtime installed (see the repository README).\n"
    f"from {TritonPythonModel.__module__} import TritonPythonModel  # noqa: F401\n"
)

# ONNX TensorProto element types -> Triton data types
_ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
                   7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
                   13: "TYPE_UINT64", 16: "TYPE_BF16"}


@dataclass
class TritonOptions:
    """What ``wmoe export triton`` writes; the defaults suit one GPU serving several cameras."""

    name: str = "wmoe"
    backends: Tuple[str, ...] = ()  # () -> onnxruntime for an ONNX or checkpoint, tensorrt for an engine
    max_batch_size: int = 8
    preferred_batch_sizes: Tuple[int, ...] = ()  # () -> none (engines: the profiles' OPT sizes)
    max_queue_delay_us: int = 2000  # how long the scheduler may hold a request to form a bigger batch
    instance_count: int = 1  # model instances per device (several overlap copies and compute)
    device: str = "gpu"  # gpu | cpu: instance_group kind
    threads: int = 0  # Python backend: ONNX Runtime intra-op threads per instance (0: its default)
    version: int = 1
    frame_size: Optional[Tuple[int, int]] = None  # checkpoint source only: camera frame (H, W); None -> SxS
    pretrained: Optional[str] = None  # checkpoint source only: backbone weights file
    threshold: Optional[float] = None  # checkpoint source only: overrides <checkpoint>.threshold.json
    pixel_threshold: Optional[float] = None  # checkpoint source only
    container_tag: str = DEFAULT_CONTAINER_TAG
    warmup: bool = True  # zero frames at batch 1 and max at load: the first camera frame is not the slow one
    overwrite: bool = False  # replace an existing version folder (atomically: see export/repo_commit.py)

    def check(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-." for c in self.name) or self.name.startswith("."):
            raise ExportError(f"model name {self.name!r}: use letters, digits, '_', '-' or '.'")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise ExportError(f"unknown backend(s) {bad}: choose from {list(BACKENDS)}")
        if self.max_batch_size < 1:
            raise ExportError(f"max batch size must be >= 1, got {self.max_batch_size}")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ExportError(f"preferred batch sizes {list(self.preferred_batch_sizes)} must lie in "
                              f"1..{self.max_batch_size} (the max batch size)")
        if self.max_queue_delay_us < 0 or self.instance_count < 1 or self.threads < 0 or self.version < 1:
            raise ExportError("queue delay and threads must be >= 0; instance count and version >= 1")
        if self.device not in DEVICES:
            raise ExportError(f"device must be one of {list(DEVICES)}, got {self.device!r}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton TYPE_*
    dims: Tuple[int, ...]  # without the batch axis; -1 for a variable size


@dataclass
class ModelSpec:
    """The signature and metadata of the model file a repository serves."""

    path: Path
    kind: str  # onnx | engine
    input: TensorSpec
    outputs: List[TensorSpec]
    metadata: Dict[str, str] = field(default_factory=dict)
    batch_ranges: List[List[int]] = field(default_factory=list)  # engines: [[min, opt, max], ...]


def _require_frames(path: Path, meta: ModelMeta, inp: TensorSpec, batch_dynamic: bool, onnx: bool = True) -> None:
    if onnx and meta.flavor != "portable":
        raise ExportError(f"{path} is the {meta.flavor} flavor (TensorRT plugin nodes): Triton's ONNX Runtime and "
                          "Python backends need the portable flavor (wmoe export onnx CKPT --flavor portable); "
                          "serve plugin engines with --backend tensorrt")
    if meta.input != INPUT_FRAMES or inp.data_type != "TYPE_UINT8" or len(inp.dims) != 3 or inp.dims[2] != 3 \
            or min(inp.dims) < 1:
        raise ExportError(f"{path}: input {inp.name!r} is {inp.data_type} {list(inp.dims)} per image; a Triton "
                          "repository serves uint8 (H,W,3) camera frames: export with in-graph preprocessing "
                          "(wmoe export onnx CKPT --frame-size HxW) or pass the checkpoint to wmoe export triton")
    if not batch_dynamic:
        raise ExportError(f"{path}: the batch axis of input {inp.name!r} is fixed; Triton batches requests on a "
                          "dynamic first axis (re-export with wmoe export onnx)")


def describe_onnx(path: Union[str, Path]) -> ModelSpec:
    """Input/outputs and ``wmoe.*`` metadata of an exported ONNX (weights are not read).

    Reads the graph with ``onnx`` where it is installed (``wmoe[export]``); a runtime-only install (``wmoe[runtime]``,
    e.g. on a Jetson, where the repository is written beside the engine) has ONNX Runtime instead, which reads the
    same signature by opening the model on the CPU (:func:`_describe_onnx_ort`)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    try:
        import onnx
    except ImportError:
        return _describe_onnx_ort(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise ExportError(f"{path} is not an ONNX model ({type(e).__name__}: {e})") from e
    if not proto.graph.input or not proto.graph.output:
        raise ExportError(f"{path} is not an ONNX model (no graph inputs/outputs)")
    metadata = {p.key: p.value for p in proto.metadata_props}
    try:
        meta = ModelMeta.from_metadata(metadata, str(path))
        read_onnx_contract(path)  # a graph that contradicts its metadata is refused before anything is staged
    except ContractError as e:
        raise ExportError(str(e)) from None
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ExportError(f"{path}: expected one input, found {[i.name for i in inputs]}")

    def spec(v) -> Tuple[TensorSpec, bool]:
        t = v.type.tensor_type
        if t.elem_type not in _ONNX_TO_TRITON:
            raise ExportError(f"{path}: tensor {v.name!r} has ONNX element type {t.elem_type}, which Triton lacks")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims:
            raise ExportError(f"{path}: tensor {v.name!r} has no batch axis")
        return TensorSpec(v.name, _ONNX_TO_TRITON[t.elem_type], tuple(dims[1:])), dims[0] == -1

    inp, dynamic = spec(inputs[0])
    _require_frames(path, meta, inp, dynamic)
    outs = [spec(o)[0] for o in proto.graph.output]
    return ModelSpec(path, "onnx", inp, outs, metadata)


# ONNX Runtime's NodeArg.type strings -> Triton data types (the same element types as _ONNX_TO_TRITON)
_ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(uint8)": "TYPE_UINT8", "tensor(int8)": "TYPE_INT8",
                  "tensor(uint16)": "TYPE_UINT16", "tensor(int16)": "TYPE_INT16", "tensor(int32)": "TYPE_INT32",
                  "tensor(int64)": "TYPE_INT64", "tensor(bool)": "TYPE_BOOL", "tensor(float16)": "TYPE_FP16",
                  "tensor(double)": "TYPE_FP64", "tensor(uint32)": "TYPE_UINT32", "tensor(uint64)": "TYPE_UINT64",
                  "tensor(bfloat16)": "TYPE_BF16"}


def _describe_onnx_ort(path: Path) -> ModelSpec:
    """:func:`describe_onnx` without the ``onnx`` package: the metadata with the standard-library reader, the
    signature from an ONNX Runtime CPU session (only the portable flavor loads there, and only it is served from an
    ONNX: the flavor is checked first)."""
    from wmoe.onnx_meta import read_onnx_metadata

    try:
        metadata = read_onnx_metadata(path)
        meta = ModelMeta.from_metadata(metadata, str(path))
        read_onnx_contract(path)  # a graph that contradicts its metadata is refused before anything is staged
    except ContractError as e:
        raise ExportError(str(e)) from None
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(f"{path}: reading an ONNX signature needs the 'onnx' or 'onnxruntime' package; install "
                          'it with: pip install "wmoe[runtime]"') from None
    if meta.flavor != "portable":  # ONNX Runtime cannot load TensorRT plugin nodes: say what to do instead
        _require_frames(path, meta, TensorSpec("", "TYPE_UINT8", (1, 1, 3)), True)
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise ExportError(f"{path} is not an ONNX model ONNX Runtime loads ({type(e).__name__}: {e})") from e
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ExportError(f"{path}: expected one input, found {[i.name for i in inputs]}")

    def spec(v) -> Tuple[TensorSpec, bool]:
        if v.type not in _ORT_TO_TRITON:
            raise ExportError(f"{path}: tensor {v.name!r} has ONNX type {v.type}, which Triton lacks")
        dims = [d if isinstance(d, int) else -1 for d in v.shape]
        if not dims:
            raise ExportError(f"{path}: tensor {v.name!r} has no batch axis")
        return TensorSpec(v.name, _ORT_TO_TRITON[v.type], tuple(dims[1:])), dims[0] == -1

    inp, dynamic = spec(inputs[0])
    _require_frames(path, meta, inp, dynamic)
    return ModelSpec(path, "onnx", inp, [spec(o)[0] for o in sess.get_outputs()], metadata)


def describe_engine(path: Union[str, Path]) -> ModelSpec:
    """Input/outputs of a TensorRT engine from its sidecar (``wmoe export trt`` writes both): the exported model's
    ``wmoe.*`` metadata, plus what the engine was built for as ``wmoe.engine.*``."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such engine file")
    try:
        side = EngineSidecar.read(EngineSidecar.path_for(path))
        meta = side.model_meta
        if not side.check_engine(path):  # the sidecar must be this engine's: it carries the threshold served
            warnings.warn(f"{EngineSidecar.path_for(path)} records no engine SHA-256 (written by an older wmoe): "
                          f"it cannot be checked against {path.name}; rebuild with wmoe export trt to bind them")
    except (EngineCompatError, ContractError) as e:
        raise ExportError(str(e)) from None
    if len(side.inputs) != 1 or not side.outputs:
        raise ExportError(f"{EngineSidecar.path_for(path)}: the sidecar lists inputs {side.inputs} and outputs "
                          f"{side.outputs}; expected one input and the model's outputs")
    (name, shape), = side.inputs.items()
    # wmoe's graphs take uint8 frames (in-graph preprocessing) or float images, and return float32 (ExportWrapper)
    inp = TensorSpec(name, "TYPE_UINT8" if meta.input == INPUT_FRAMES else "TYPE_FP32", tuple(shape[1:]))
    _require_frames(path, meta, inp, bool(shape) and shape[0] == -1, onnx=False)  # a plugin engine serves too
    outs = [TensorSpec(n, "TYPE_FP32", tuple(s[1:])) for n, s in side.outputs.items()]
    built = {f"{META_PREFIX}engine.{k}": v if isinstance(v, str) else json.dumps(v)
             for k, v in sorted(asdict(side).items()) if k != "metadata"}
    return ModelSpec(path, "engine", inp, outs, {**side.metadata, **built}, [list(r) for r in side.batch_ranges])


def pbtxt_string(s: str) -> str:
    """A protobuf text-format string literal (non-ASCII as octal UTF-8 bytes)."""
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _tensor(t: TensorSpec, indent: str) -> str:
    lines = [f"name: {pbtxt_string(t.name)}", f"data_type: {t.data_type}"]
    if t.dims:
        lines.append(f"dims: [ {', '.join(str(d) for d in t.dims)} ]")
    else:  # per-image scalar: Triton wants >= 1 dim; the model's tensor is (N,)
        lines += ["dims: [ 1 ]", "reshape: { shape: [ ] }"]
    return f"{indent}{{\n" + "".join(f"{indent}  {ln}\n" for ln in lines) + f"{indent}}}"


def model_config(name: str, backend: str, spec: ModelSpec, opts: TritonOptions,
                 parameters: Mapping[str, str]) -> str:
    """The ``config.pbtxt`` text of one model of the repository."""
    head = [f"name: {pbtxt_string(name)}"]
    head.append(f"backend: {pbtxt_string('python')}" if backend == "python"
                else f"platform: {pbtxt_string(PLATFORMS[backend])}")
    head.append(f"max_batch_size: {opts.max_batch_size}")
    parts = [f"# Written by wmoe export triton (wmoe {__version__}) from {spec.path.name}.",
             "\n".join(head),
             "input [\n" + _tensor(spec.input, "  ") + "\n]",
             "output [\n" + ",\n".join(_tensor(o, "  ") for o in spec.outputs) + "\n]"]
    db = ["dynamic_batching {"]
    if opts.preferred_batch_sizes:
        db.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in opts.preferred_batch_sizes)} ]")
    db += [f"  max_queue_delay_microseconds: {opts.max_queue_delay_us}", "}"]
    parts.append("\n".join(db))
    parts.append(f"instance_group [\n  {{\n    count: {opts.instance_count}\n    kind: {DEVICES[opts.device]}\n"
                 "  }\n]")
    parts.append("version_policy: { latest: { num_versions: 1 } }")
    if opts.warmup:
        dims = ", ".join(str(d) for d in spec.input.dims)
        parts.append("model_warmup [\n" + ",\n".join(
            f"  {{\n    name: \"zero frames, batch {n}\"\n    batch_size: {n}\n"
            f"    inputs {{\n      key: {pbtxt_string(spec.input.name)}\n      value: {{ data_type: {spec.input.data_type} "
            f"dims: [ {dims} ] zero_data: true }}\n    }}\n  }}"
            for n in sorted({1, opts.max_batch_size})) + "\n]")
    for k, v in sorted(parameters.items()):
        parts.append(f"parameters {{\n  key: {pbtxt_string(k)}\n  value: {{ string_value: {pbtxt_string(v)} }}\n}}")
    return "\n".join(parts) + "\n"


def _external_files(path: Path) -> List[Path]:
    """Files holding an ONNX model's external weights (they must travel with it); no onnx package needed."""
    from wmoe.onnx_meta import read_onnx_external_files

    try:
        return [path.parent / n for n in read_onnx_external_files(path)]
    except ContractError as e:
        raise ExportError(str(e)) from None


def _place(src: Path, dst: Path, link: bool = False) -> None:
    """``src`` at ``dst``, atomically: a copy, or with ``link`` a hard link where possible (the repository's own
    second copy of a 1 GB model costs nothing; the user's file is always copied, so editing it never changes the
    served model)."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            if not link:
                raise OSError
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _source_kind(src: Path) -> str:
    if src.suffix == ".onnx":
        return "onnx"
    if src.suffix in ENGINE_SUFFIXES:
        return "engine"
    return "checkpoint"


def write_repository(src: Union[str, Path], out: Union[str, Path], opts: Optional[TritonOptions] = None) -> Path:
    """Write (or add a version to) the Triton model repository ``out`` for ``src``: a checkpoint, an exported
    ONNX with uint8 frame input, or a TensorRT engine with its sidecar. Returns ``out``."""
    opts = opts or TritonOptions()
    src, out = Path(src), Path(out)
    kind = _source_kind(src)
    backends = opts.backends or (("tensorrt",) if kind == "engine" else ("onnxruntime",))
    opts = replace(opts, backends=tuple(dict.fromkeys(backends)))  # the caller's options stay as given
    opts.check()
    if not src.is_file():
        raise ExportError(f"{src}: no such file")
    if kind == "engine" and set(opts.backends) != {"tensorrt"}:
        raise ExportError(f"{src} is a TensorRT engine: it serves with --backend tensorrt only (the onnxruntime "
                          "and python backends take the ONNX)")
    if kind != "engine" and "tensorrt" in opts.backends:
        raise ExportError("--backend tensorrt takes an engine (wmoe export trt MODEL.onnx --out MODEL.engine); "
                          f"{src} is not one")
    if kind != "checkpoint" and (opts.frame_size, opts.pretrained, opts.threshold, opts.pixel_threshold) != (None,) * 4:
        raise ExportError("--frame-size, --pretrained and the thresholds apply to a checkpoint source; an ONNX or "
                          "engine carries its own (re-export it to change them)")
    models = {b: opts.name if b != "python" else f"{opts.name}_python" for b in opts.backends}
    spec = None
    if kind != "checkpoint":  # check the source before touching the repository
        spec = describe_engine(src) if kind == "engine" else describe_onnx(src)
        if kind == "engine":
            opts = _check_engine_batch(spec, opts)
    with FolderLock(out, "model repository") as lock:  # one export at a time (creates ``out``; read-only/full: one line)
        if lock.stale:  # the previous export was killed holding it: said, as wmoe train says it
            print(lock.stale)
        for m in models.values():
            for line in repo_commit.recover(out / m):
                print(line)
        taken = [out / m / str(opts.version) for m in models.values() if (out / m / str(opts.version)).exists()]
        if taken and not opts.overwrite:
            raise ExportError(f"{taken[0]} exists: pass --version N for a new version or --overwrite to replace "
                              "it (the served version stays until its replacement is complete)")
        staged: Dict[str, repo_commit.StagedVersion] = {}
        try:
            for b, m in models.items():
                staged[b] = repo_commit.new_stage(out / m, opts.version)
            spec = _fill(src, kind, spec, staged, models, opts)
            repo_commit.fault_hook("staged")
            for b, s in staged.items():
                verify_version(s.stage, b, spec, s.config.read_text(encoding="utf-8"), models[b], opts)
            repo_commit.fault_hook("verified")
        except BaseException as e:
            for s in staged.values():  # what serves keeps serving: only the staging is removed
                repo_commit.discard(s)
            where = getattr(e, "filename", None) or out
            err = output_error(e, where, "nothing was written") if not isinstance(e, OutputError) else e
            if err is not None:  # a full disk or a read-only folder: one line, and what still serves
                raise OutputError(f"{err}; the repository {out} serves what it served") from None
            raise
        for s in staged.values():
            repo_commit.commit(s)
        atomic_write_text(out / "README.md", repository_readme(out, models, spec, opts))
    return out


def _fill(src: Path, kind: str, spec: Optional[ModelSpec], staged: Mapping[str, "repo_commit.StagedVersion"],
          models: Mapping[str, str], opts: TritonOptions) -> ModelSpec:
    """Write every file of the new version into the staging folders (and each model's staged config)."""
    from wmoe.contract import sha256_file

    source_sha = None if kind == "checkpoint" else sha256_file(src)
    info: Dict[str, object] = {"source": str(src.resolve()), "source_kind": kind}
    if kind == "checkpoint":
        from .onnx_export import export_onnx  # imports torch: only for a checkpoint source

        info["checkpoint_sha256"] = sha256_file(src)
        first = staged[opts.backends[0]].stage / MODEL_FILES[opts.backends[0]]
        src = export_onnx(src, first, preprocess=True, frame_size=opts.frame_size or _model_square(src),
                          pretrained=opts.pretrained, threshold=opts.threshold,
                          pixel_threshold=opts.pixel_threshold)
        spec = describe_onnx(src)
        source_sha = sha256_file(src)
    assert spec is not None
    if kind != "checkpoint":
        info["source_sha256"] = source_sha
        info["checkpoint_sha256"] = ModelMeta.from_metadata(spec.metadata, str(spec.path)).checkpoint_sha256
    info["engine_sha256" if kind == "engine" else "onnx_sha256"] = source_sha
    extra = _external_files(src) if kind != "engine" else []
    placed: Optional[Path] = src if kind == "checkpoint" else None  # the repository's own copy, once made
    for b, s in staged.items():
        d = s.stage
        dst = d / MODEL_FILES[b]
        if dst != src:
            _place(placed or src, dst, link=placed is not None)
            for f in extra:
                _place((placed or src).parent / f.name, d / f.name, link=placed is not None)
            placed = placed or dst
        if b == "tensorrt":
            _place(EngineSidecar.path_for(src), d / "model.json")
        params = dict(spec.metadata)
        if b == "python":
            atomic_write_text(d / "model.py", PYTHON_MODEL_PY)
            params[MODEL_FILE_PARAM] = MODEL_FILES[b]
            params[THREADS_PARAM] = str(opts.threads)
        repo_commit.write_record(s, {**info, "model": models[b], "backend": b, "model_file": MODEL_FILES[b]})
        atomic_write_text(s.config, model_config(models[b], b, spec, opts, params))
    return spec


def verify_version(d: Path, backend: str, spec: ModelSpec, config_text: str, model: str,
                   opts: TritonOptions) -> None:
    """Check a staged version before it may serve: every file as recorded, the model file loads (ONNX: the ONNX
    checker and an ONNX Runtime session where installed; engine: its bytes are the ones its sidecar names), its
    signature and contract are the source's, and the config matches both. Raises :class:`ExportError` naming it."""
    from wmoe.contract import sha256_file

    rec = json.loads((d / repo_commit.RECORD).read_text(encoding="utf-8"))
    for name, digest in rec["files"].items():
        if sha256_file(d / name) != digest:
            raise ExportError(f"{d / name}: the staged copy differs from what was written (SHA-256): the disk "
                              "or another process changed it; the served version is kept")
    path = d / MODEL_FILES[backend]
    got = describe_engine(path) if backend == "tensorrt" else describe_onnx(path)
    if (got.input, got.outputs, got.metadata) != (spec.input, spec.outputs, spec.metadata):
        raise ExportError(f"{path}: the staged model's signature or metadata differ from the source's")
    if backend != "tensorrt":
        _load_onnx(path)
    if backend == "python" and (d / "model.py").read_text(encoding="utf-8") != PYTHON_MODEL_PY:
        raise ExportError(f"{d / 'model.py'}: not the file wmoe writes")
    check_config_text(config_text, model, spec, opts, str(d.parent / repo_commit.CONFIG))


def _load_onnx(path: Path) -> None:
    """The ONNX checker where ``onnx`` is installed, and an ONNX Runtime session (the runtime venv has only that)."""
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            onnx.checker.check_model(str(path))  # by path: external data and > 2 GB models too
        except Exception as e:  # noqa: BLE001 - the checker raises ValidationError and protobuf errors
            raise ExportError(f"{path}: the staged ONNX fails the ONNX checker ({type(e).__name__}: {e}); the "
                              "served version is kept") from None
    try:
        import onnxruntime as ort
    except ImportError:
        return
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a load check, not a tuned session
    try:
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise ExportError(f"{path}: ONNX Runtime cannot load the staged model ({type(e).__name__}: {e}); the "
                          "served version is kept") from None


def check_config_text(text: str, model: str, spec: ModelSpec, opts: TritonOptions, where: str) -> None:
    """The config is Triton's (parsed with tritonclient's ModelConfig where installed) and agrees with the model's
    contract: name, batch, the frame size of the metadata, the outputs."""
    meta = ModelMeta.from_metadata(spec.metadata, str(spec.path))
    want_dims = [*meta.frame_size, 3] if meta.frame_size else None
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc
    except ImportError:
        dims = [int(x) for x in re.findall(r"dims: \[ ([0-9, -]+) \]", text)[0].split(",")]
        name_ok, batch, outs = f"name: {pbtxt_string(model)}" in text, opts.max_batch_size, None
    else:
        try:
            c = text_format.Parse(text, mc.ModelConfig())
        except text_format.ParseError as e:
            raise ExportError(f"{where}: the new config does not parse as a Triton ModelConfig ({e})") from None
        dims, name_ok, batch = list(c.input[0].dims), c.name == model, c.max_batch_size
        outs = sorted(o.name for o in c.output)
    problems = []
    if not name_ok:
        problems.append(f"name is not {model!r}")
    if batch != opts.max_batch_size:
        problems.append(f"max_batch_size {batch} != {opts.max_batch_size}")
    if want_dims is not None and dims != want_dims:
        problems.append(f"input dims {dims} but the model's contract says frames {meta.frame_size}")
    if outs is not None and outs != sorted(o.name for o in spec.outputs):
        problems.append(f"outputs {outs} but the model has {sorted(o.name for o in spec.outputs)}")
    if problems:
        raise ExportError(f"{where}: the new config disagrees with the model ({'; '.join(problems)}); the served "
                          "version is kept")


def _model_square(ckpt: Path) -> Tuple[int, int]:
    from wmoe.model.checkpoint import read_checkpoint

    s = read_checkpoint(ckpt)[0].config.image_size
    return (s, s)


def _check_engine_batch(spec: ModelSpec, opts: TritonOptions) -> TritonOptions:
    """Triton sends any batch in 1..max_batch_size: one profile must cover all of them. Returns the options with
    the profiles' OPT sizes as preferred batch sizes when none were given."""
    if not spec.batch_ranges:
        return opts
    if not any(lo == 1 and hi >= opts.max_batch_size for lo, _, hi in spec.batch_ranges):
        raise ExportError(f"{spec.path}: its batch profiles {spec.batch_ranges} do not cover batches 1.."
                          f"{opts.max_batch_size}: pass --max-batch within a profile that starts at 1, or rebuild "
                          f"with wmoe export trt --batch 1:{max(opts.max_batch_size // 2, 1)}:{opts.max_batch_size}")
    if opts.preferred_batch_sizes:
        return opts
    return replace(opts, preferred_batch_sizes=tuple(sorted({opt for _, opt, _ in spec.batch_ranges
                                                             if opt <= opts.max_batch_size})))


def repository_readme(out: Path, models: Mapping[str, str], spec: ModelSpec, opts: TritonOptions) -> str:
    """The repository's README: how to serve it (x86, Jetson), load-test it and call it."""
    h, w, _ = spec.input.dims
    tag = opts.container_tag
    main = next((m for b, m in models.items() if b != "python"), None)
    py = models.get("python")
    gpus = "--gpus all " if opts.device == "gpu" else ""
    lines = [f"# Triton model repository: {', '.join(models.values())}", "",
             f"Written by `wmoe export triton` (wmoe {__version__}) from `{spec.path.name}`. Input `{spec.input.name}`: "
             f"uint8 RGB frames (N, {h}, {w}, 3), N <= {opts.max_batch_size}; outputs "
             + ", ".join(f"`{o.name}` {list(o.dims) or '(N,)'}" for o in spec.outputs)
             + ". The model's metadata (threshold, preprocessing, config) is in each `config.pbtxt` as `parameters`.",
             "", "| model | backend | file |", "| --- | --- | --- |"]
    for b, m in models.items():
        lines.append(f"| `{m}` | {PLATFORMS.get(b, 'python (wmoe.runtime)')} | `{m}/{opts.version}/{MODEL_FILES[b]}` |")
    serve = f"-v \"$PWD/{out.name}\":/models \\\n  nvcr.io/nvidia/tritonserver:{tag}-py3"
    lines += ["", "## Serve it", ""]
    if main:
        lines += ["x86-64 with an NVIDIA GPU (NGC container; 8000 HTTP, 8001 gRPC, 8002 metrics):", "", "```bash",
                  f"docker run {gpus}--rm -p 8000:8000 -p 8001:8001 -p 8002:8002 {serve} \\",
                  f"  tritonserver --model-repository=/models --model-control-mode=explicit --load-model={main}",
                  "```", "", "Jetson (JetPack 6+, the `-igpu` container of the same release):", "", "```bash",
                  f"docker run --runtime nvidia --rm --net host {serve}-igpu \\",
                  f"  tritonserver --model-repository=/models --model-control-mode=explicit --load-model={main}",
                  "```", ""]
    if "tensorrt" in models:
        eng = spec.metadata
        lines += [f"The engine was built with TensorRT {eng.get('wmoe.engine.tensorrt_version', '?')} for "
                  f"{eng.get('wmoe.engine.gpu_name', '?')}: the container's TensorRT must have the same major.minor "
                  "version (see the container's release notes) and the GPU must be the same model; otherwise "
                  "rebuild the engine on the serving machine (`wmoe export trt`). On a Jetson, build it there.", ""]
    if py:
        ort = "onnxruntime-gpu" if opts.device == "gpu" else "onnxruntime"
        lines += [f"`{py}` runs the ONNX through `wmoe.runtime` inside the server (for servers without the ONNX "
                  "Runtime backend). The server's Python needs the runtime: numpy, pillow, ONNX Runtime and "
                  "wmoe without its training dependencies (a wheel built with `pip wheel --no-deps -w wheels "
                  "PATH/TO/wmoe`):", "", "```bash",
                  f"docker run {gpus}--rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$PWD/wheels\":/wheels "
                  f"{serve} \\",
                  f"  bash -c 'pip install numpy pillow {ort} && pip install --no-deps /wheels/wmoe-*.whl && \\",
                  f"  tritonserver --model-repository=/models --model-control-mode=explicit --load-model={py}'",
                  "```", "", "On a Jetson use the `-igpu` container and `--runtime nvidia --net host` as above; PyPI has "
                  "no onnxruntime-gpu for Jetson (use NVIDIA's Jetson wheel, or serve the engine instead).", ""]
    target = main or py
    lines += ["## Load-test it", "",
              "`perf_analyzer` ships in the SDK container (shape without the batch axis; `-b` frames per request):",
              "", "```bash",
              f"docker run --rm --net host nvcr.io/nvidia/tritonserver:{tag}-py3-sdk \\",
              f"  perf_analyzer -m {target} -u 127.0.0.1:8001 -i grpc --input-data random "
              f"--shape {spec.input.name}:{h},{w},3 -b 1 --concurrency-range 1:8 --percentile 99",
              "```", "", "## Call it", "", "```python",
              "import numpy as np, tritonclient.grpc as grpcclient  # pip install \"wmoe[serve]\"",
              "from wmoe.contract import Decision",
              "client = grpcclient.InferenceServerClient(\"127.0.0.1:8001\")",
              f"params = client.get_model_config(\"{target}\").config.parameters  # the model's metadata",
              "decision = Decision.from_json(params[\"wmoe.decision\"].string_value)  # threshold stored at export",
              f"frames = np.zeros((2, {h}, {w}, 3), np.uint8)  # RGB (OpenCV gives BGR: frame[..., ::-1])",
              f"inp = grpcclient.InferInput(\"{spec.input.name}\", list(frames.shape), \"UINT8\")",
              "inp.set_data_from_numpy(frames)",
              f"res = client.infer(\"{target}\", [inp])",
              "scores = res.as_numpy(\"scores\")[:, 0]  # (N,) image scores; maps: res.as_numpy(\"maps\") (N, S, S)",
              "verdicts = decision.verdicts(scores)  # 'anomalous' / 'normal' / 'undecided' (no threshold, non-finite)",
              "```", "", "Prometheus metrics: `curl 127.0.0.1:8002/metrics`. A new model: "
              f"`wmoe export triton NEW --out {out.name} --version {opts.version + 1}` adds a version folder; "
              f"`curl -X POST 127.0.0.1:8000/v2/repository/models/{target}/load` (explicit model control, as above) "
              "switches the server to the newest version without a restart.", ""]
    return "\n".join(lines)
