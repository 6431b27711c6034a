"""TensorRT plugins for the plugin ONNX flavor: quickly deployable plugins (``tensorrt.plugin``, TensorRT >= 10.9)
with ahead-of-time compiled Triton PTX (``@trtp.aot_impl``), so the engine runs without Python (also under trtexec).

Plugins (namespace ``wmoe``; op types and attributes as :mod:`wmoe.export.plugin_graph` writes them):

* ``wmoe::WmoeWcmaFrequency`` -> ``_wcma_main_kernel`` (Eq. 5-6), kernel ``wcma_main`` of the stage spec
  ``wcma_frequency``;
* ``wmoe::WmoeMoeRouter`` -> ``_router_kernel`` (Eq. 8 gate), kernel ``moe_router`` of the stage spec
  ``moe_experts``.

Grid, threads and int32 arguments come from the kernel's spec (:func:`wmoe.kernels.spec.launch_plan`: the formulas
the Triton launcher uses, applied to TensorRT shape expressions), with the compiled tiles and warps of the manifest
entry. The PTX comes from :func:`wmoe.kernels.aot.compile_all` (its ``manifest.json``): the ``a16`` variant
(vectorized loads) when the spec's aligned dims are build-time multiples of 16 -- TensorRT's tensor addresses are
256-byte aligned (``IExecutionContext::setTensorAddress`` requires it of I/O; an assumption for activations that no
GPU here could check) -- the general variant otherwise. Every artifact is checked here
before it goes into an engine (:func:`check_plugin_artifact`): arguments ordered inputs / int32 scalars / outputs
and matching the plugin's I/O, no Triton global or profile scratch and a PTX ``.entry`` that declares exactly the
launch arguments (Triton's hidden trailing scratch pointers removed by :func:`wmoe.kernels.aot.exact_entry`:
TensorRT's AOT launch does not pass them, see docs/kernels.md), no TMA descriptors, at most 48 KB of shared
memory (:data:`PLUGIN_SMEM_LIMIT`), PTX ``.version`` lowered to the lowest ISA that ptxas assembles the kernel at
(recorded in the manifest at compile time by :func:`wmoe.kernels.aot.lowest_ptx_isa`) and refused when the driver's
JIT is older. Everything except :func:`register_plugins` runs without TensorRT and is unit-tested;
:func:`register_plugins` runs in CI against TensorRT's real ``tensorrt.plugin`` frontend
(``tests/test_trt_frontend.py``).

Neither torch nor Triton is imported here, nor by anything an engine build from a compiled kernel directory calls:
the launch formulas are data (:mod:`wmoe.kernels.stages`) and the lowest PTX ISA is in the manifest, so a Jetson
builds the plugin flavor in JetPack's Python (tests/test_runtime_install.py builds it with both blocked).

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` validates the decorated functions with
``inspect.signature`` + ``issubclass`` on the annotations, which must be classes, not strings.
"""

import importlib
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from wmoe.kernels.aot import entry_params, lowest_ptx_isa, ptx_version, set_ptx_version
from wmoe.kernels.spec import launch_plan as spec_plan
from wmoe.kernels.stages import plugin_stages, stage_specs

from wmoe.errors import ExportError
from wmoe.contract import PLUGIN_DOMAIN as DOMAIN

MIN_TRT_AOT = (10, 9)  # tensorrt.plugin.aot_impl
# Dynamic shared memory a plugin kernel may use: above 48 KB a kernel needs cudaFuncSetAttribute(
# MaxDynamicSharedMemorySize), which Triton's own launcher calls and TensorRT's AOT plugin launch is not documented
# to call. Every plugin kernel, dtype and target stays within it (the per-target tiles of the stage specs,
# kernels/stages.py), so fp32 and fp16 engines both work.
PLUGIN_SMEM_LIMIT = 48 * 1024

# CUDA driver version (major, minor) -> the newest PTX ISA its JIT compiles (CUDA release notes / PTX ISA docs).
DRIVER_PTX = {(11, 8): (7, 8), (12, 0): (8, 0), (12, 1): (8, 1), (12, 2): (8, 2), (12, 3): (8, 3), (12, 4): (8, 4),
              (12, 5): (8, 5), (12, 6): (8, 5), (12, 8): (8, 7), (12, 9): (8, 8), (13, 0): (9, 0)}


@dataclass(frozen=True)
class PluginKernel:
    """How one plugin maps onto one kernel of a stage spec (and its AOT artifacts)."""
    op: str  # ONNX op_type = TensorRT plugin name
    stage: str  # the stage spec (``wmoe.kernels.stages.stage_specs``)
    kernel: str  # the kernel spec = manifest entry prefix (``wcma_main`` -> ``wcma_main_fp16_sm_90[_a16]``)

    @property
    def stage_spec(self):
        return stage_specs()[self.stage]  # data only: no torch, no Triton (the engine build runs without them)

    @property
    def spec(self):
        return self.stage_spec.kernel(self.kernel)

    def _count(self, role: str) -> int:
        return sum(a.role == role for a in self.spec.args)

    @property
    def n_inputs(self) -> int:
        return self._count("in")

    @property
    def n_scalars(self) -> int:
        return self._count("scalar")

    @property
    def n_outputs(self) -> int:
        return self._count("out")


#: every stage record with a plugin (:class:`wmoe.kernels.spec.Plugin`), by op type
PLUGINS = {op: PluginKernel(op, s.name, s.plugin.kernel)  # type: ignore[union-attr]  # plugin_stages: has one
           for op, s in plugin_stages().items()}


def launch_plan(op: str, dims: Dict[str, Any], constexprs: Dict[str, int], num_warps: int
                ) -> Tuple[Tuple[Any, Any, Any], int, List[Any]]:
    """``(grid, threads per block, int32 scalar args in kernel order)`` for one plugin call, from the kernel's spec.

    ``dims`` (the stage's given dims: ``B, H, W, C, D`` / ``B, C, NE, TOPK``) hold ints (tests, planning) or
    ``trtp`` shape expressions (inside ``aot_impl``): the spec's formulas serve both.
    """
    plugin = PLUGINS.get(op)
    if plugin is None:
        raise ExportError(f"no TensorRT plugin named {op!r} (known: {sorted(PLUGINS)})")
    try:
        return spec_plan(plugin.spec, plugin.stage_spec.dims(**dims), constexprs, num_warps)
    except (KeyError, ValueError) as e:
        raise ExportError(f"{op}: {e}") from e


def aligned_dims(op: str, dims: Dict[str, Any]) -> bool:
    """Whether the ``a16`` variant may run: every aligned dim of the kernel's spec a build-time multiple of 16."""
    plugin = PLUGINS[op]
    full = plugin.stage_spec.dims(**dims)
    values = [_constant(full.get(n)) for n in plugin.spec.aligned]
    return bool(values) and all(v is not None and v % 16 == 0 for v in values)


def _constant(v: Any) -> Optional[int]:
    """An int, or a TensorRT shape expression's build-time value; None when only known at run time."""
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        return int(v.constant_value()) if v.is_constant else None
    except (AttributeError, RuntimeError, TypeError):
        return None


def driver_ptx_limit(driver_version: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """Newest PTX ISA a CUDA driver accepts; ``driver_version`` as ``cuDriverGetVersion`` (12040) or (12, 4)."""
    if isinstance(driver_version, int):
        driver_version = (driver_version // 1000, (driver_version % 1000) // 10)
    known = [k for k in sorted(DRIVER_PTX) if k <= tuple(driver_version)]
    if not known:
        raise ExportError(f"CUDA driver {driver_version[0]}.{driver_version[1]} is too old for these kernels "
                          f"(need >= {min(DRIVER_PTX)[0]}.{min(DRIVER_PTX)[1]})")
    return DRIVER_PTX[known[-1]]


def driver_for_ptx(isa: Tuple[int, int]) -> Tuple[int, int]:
    """The oldest CUDA driver (major, minor) whose JIT accepts PTX ISA ``isa``."""
    ok = [d for d in sorted(DRIVER_PTX) if DRIVER_PTX[d] >= tuple(isa)]
    if not ok:
        raise ExportError(f"no known CUDA driver accepts PTX ISA {isa[0]}.{isa[1]}")
    return ok[0]


_TMA = re.compile(r"cp\.async\.bulk\.tensor|\.tensormap|tensormap\.|prefetch\.tensormap")


def check_plugin_artifact(art: Dict[str, Any], ptx: str, plugin: PluginKernel,
                          driver_limit: Optional[Tuple[int, int]] = None) -> List[str]:
    """The problems that make a manifest entry unusable as ``plugin``'s AOT kernel (empty list = usable)."""
    problems = list(art.get("problems", []))
    roles = [r for _, r, _ in art["signature"]]
    rank = {"in": 0, "scalar": 1, "out": 2}
    if [rank[r] for r in roles] != sorted(rank[r] for r in roles):
        problems.append("arguments are not ordered inputs, int32 scalars, outputs")
    if any(t != "i32" for _, r, t in art["signature"] if r == "scalar"):
        problems.append("a scalar argument is not int32")
    counts = (roles.count("in"), roles.count("scalar"), roles.count("out"))
    if counts != (plugin.n_inputs, plugin.n_scalars, plugin.n_outputs):
        problems.append(f"kernel has {counts} inputs/scalars/outputs, plugin {plugin.op} needs "
                        f"{(plugin.n_inputs, plugin.n_scalars, plugin.n_outputs)}")
    scratch = (int(art.get("global_scratch_bytes", 0)), int(art.get("profile_scratch_bytes", 0)))
    if any(scratch):
        problems.append(f"needs {scratch[0]} B of global and {scratch[1]} B of profile scratch (a TensorRT AOT "
                        "launch passes no scratch pointers)")
    try:
        n_params = len(entry_params(ptx))
    except ValueError as e:
        problems.append(str(e))
    else:
        if n_params != len(roles):  # Triton's hidden scratch pointers left in (a manifest from before exact_entry)
            problems.append(f"PTX entry declares {n_params} parameters, the plugin launch passes {len(roles)} "
                            "(recompile with python -m wmoe.kernels.aot: it removes Triton's hidden ones)")
    if _TMA.search(ptx):
        problems.append("uses TMA descriptors (not supported by TensorRT AOT plugins)")
    try:
        version: Optional[Tuple[int, int]] = ptx_version(ptx)
    except ValueError as e:
        version = None
        problems.append(str(e))
    if driver_limit is not None and version is not None and version > tuple(driver_limit):
        problems.append(f"PTX {'.'.join(map(str, version))} is newer than the driver accepts "
                        f"({driver_limit[0]}.{driver_limit[1]}): lower it with set_ptx_version(lowest_ptx_isa)")
    if int(art.get("shared_bytes", 0)) > PLUGIN_SMEM_LIMIT:
        problems.append(f"needs {art['shared_bytes']} B of shared memory > {PLUGIN_SMEM_LIMIT} (48 KB): a TensorRT "
                        "AOT launch does not opt in to more; compile it with smaller tiles (the kernel's "
                        "per-target configuration in kernels/stages.py)")
    return problems


class KernelStore:
    """The AOT artifacts of one ``compile_all`` directory, checked and ready for a plugin."""

    def __init__(self, directory: Union[str, Path]) -> None:
        self.dir = Path(directory)
        man = self.dir / "manifest.json"
        try:
            self.manifest = json.loads(man.read_text())
        except FileNotFoundError as e:
            raise ExportError(f"{man}: no AOT kernel manifest (python -m wmoe.kernels.aot --out {self.dir})") from e
        except ValueError as e:
            raise ExportError(f"{man}: damaged manifest ({e})") from e
        self.by_name = {a["name"]: a for a in self.manifest.get("artifacts", [])}
        self._isa: Dict[str, Tuple[int, int]] = {}  # lowest PTX ISA per artifact the manifest does not record

    def lowest_isa(self, art: Dict[str, Any], ptx: str) -> Tuple[int, int]:
        """The lowest PTX ISA the artifact assembles at: the manifest's ``lowest_ptx_isa`` (recorded at compile
        time, so the engine build needs neither Triton nor ptxas), else found now with Triton's ptxas (a manifest
        from before the field; ExportError saying what to do when Triton is not installed)."""
        recorded = art.get("lowest_ptx_isa")
        if recorded:
            m = re.fullmatch(r"(\d+)\.(\d+)", str(recorded))
            if not m:
                raise ExportError(f"{self.dir / 'manifest.json'}: {art['name']} has lowest_ptx_isa {recorded!r}, "
                                  "not MAJOR.MINOR: recompile it with python -m wmoe.kernels.aot")
            return int(m.group(1)), int(m.group(2))
        if art["name"] not in self._isa:
            try:
                importlib.import_module("triton")  # its ptxas (wmoe.kernels.aot._ptxas)
            except ImportError:
                raise ExportError(f"{self.dir / 'manifest.json'} does not record the lowest PTX ISA of {art['name']} "
                                  "(compiled by an older wmoe) and finding it needs Triton's ptxas: recompile the "
                                  f"kernels with python -m wmoe.kernels.aot --out {self.dir} where Triton is "
                                  "installed, or pip install 'wmoe[kernels]'") from None
            try:
                self._isa[art["name"]] = lowest_ptx_isa(ptx)
            except ValueError as e:
                raise ExportError(f"{self.dir / art['ptx']}: {e}") from None
        return self._isa[art["name"]]

    def kernel(self, op: str, dtype: str, target: str, driver_limit: Optional[Tuple[int, int]] = None,
               aligned: bool = False) -> Tuple[Dict[str, Any], str]:
        """``(manifest entry, PTX text capped to the driver)`` for plugin ``op``; ExportError if unusable.
        ``aligned``: the ``a16`` variant when the directory has it (see :func:`aligned_dims`)."""
        plugin = PLUGINS[op]
        name = f"{plugin.kernel}_{dtype}_{target}"
        if aligned and f"{name}_a16" in self.by_name:
            name += "_a16"
        art = self.by_name.get(name)
        if art is None:
            raise ExportError(f"{self.dir}: no AOT kernel {name} (have: {sorted(self.by_name)}); compile it with "
                              f"python -m wmoe.kernels.aot --out {self.dir} --targets {target}")
        ptx_path = self.dir / art["ptx"]
        try:
            ptx = ptx_path.read_text()
        except OSError as e:
            raise ExportError(f"{ptx_path}: cannot read the AOT kernel {name} ({e}): recompile {self.dir}") from e
        need = self.lowest_isa(art, ptx)
        if driver_limit is not None and need > tuple(driver_limit):
            d = driver_for_ptx(need)
            raise ExportError(f"{ptx_path}: {art['kernel']} needs PTX ISA {need[0]}.{need[1]}, the CUDA "
                              f"driver here accepts up to {driver_limit[0]}.{driver_limit[1]}: update the NVIDIA "
                              f"driver to CUDA {d[0]}.{d[1]} or newer, or build the portable flavor")
        try:  # the lowest ISA ptxas assembles it at: any driver that accepts it can
            ptx = set_ptx_version(ptx, need)
        except ValueError as e:
            raise ExportError(f"{ptx_path}: {e}") from None
        problems = check_plugin_artifact(art, ptx, plugin, driver_limit)
        if problems:
            raise ExportError(f"{self.dir / art['ptx']}: unusable as TensorRT plugin {op}: " + "; ".join(problems))
        return art, ptx


def trt_version_ok(version: str) -> bool:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:2]) >= MIN_TRT_AOT


_REGISTERED: Dict[str, Any] = {}


def unregister_plugins() -> None:
    """Forget this process's registration (tests load several ``tensorrt.plugin`` frontends one after another)."""
    _REGISTERED.clear()


def register_plugins(store: KernelStore, target: str, driver_limit: Optional[Tuple[int, int]] = None) -> None:
    """Register every stage's plugin (the records of :func:`wmoe.kernels.stages.plugin_stages`) with
    ``tensorrt.plugin`` (once per process) before the ONNX parser sees the nodes."""
    import tensorrt as trt
    if not trt_version_ok(trt.__version__):
        raise ExportError(f"TensorRT {trt.__version__} has no AOT Python plugins (needs >= 10.9): build the "
                          "portable flavor")
    import tensorrt.plugin as trtp  # type: ignore  # no stub: run against the real frontend (test_trt_frontend)
    key = (str(store.dir.resolve()), target, tuple(driver_limit) if driver_limit is not None else None)
    if _REGISTERED.get("trtp") is trtp:
        if _REGISTERED["key"] == key:
            return
        # tensorrt.plugin keeps the first definition of a plugin name for the life of the process (a second
        # @register of the same name is refused or ignored): the closures below would keep serving the first
        # store, target and driver limit, and an engine would embed kernels it was not asked for
        (d0, t0, l0), (d1, t1, l1) = _REGISTERED["key"], key
        raise ExportError(f"the wmoe TensorRT plugins are already registered in this process with kernels {d0}, "
                          f"target {t0}, PTX limit {l0}; they cannot be registered again with kernels {d1}, target "
                          f"{t1}, PTX limit {l1}: build each engine in its own process (one wmoe export trt each)")
    # int attributes are declared as int32 arrays: the ONNX parser passes an ONNX INT as a one-element array, and
    # TensorRT <= 11.1 turns a field annotated ``int`` into ``int(array)``, which numpy >= 2.4 refuses
    I32 = npt.NDArray[np.int32]

    def _dtype(desc) -> str:
        if desc.dtype == trt.float16:
            return "fp16"
        if desc.dtype == trt.float32:
            return "fp32"
        raise ExportError(f"plugin input dtype {desc.dtype} has no AOT kernel (fp16/fp32 only)")

    registered = {}
    for op, stage in plugin_stages().items():
        describe, aot = _plugin_functions(trt, trtp, I32, stage, store, target, driver_limit, _dtype)
        trtp.register(f"{DOMAIN}::{op}")(describe)
        trtp.aot_impl(f"{DOMAIN}::{op}")(aot)
        registered[op] = aot
    _REGISTERED.update({"trtp": trtp, "key": key, **registered})


def _plugin_functions(trt: Any, trtp: Any, I32: Any, stage: Any, store: "KernelStore", target: str,
                      driver_limit: Optional[Tuple[int, int]], dtype_of: Any) -> Tuple[Any, Any]:
    """The ``tensorrt.plugin`` describe and ``aot_impl`` functions of one stage's plugin, from its record.

    ``tensorrt.plugin`` reads their signatures (``inspect.signature``: the tensor inputs annotated ``TensorDesc``,
    then the attributes, the output count from the return annotation) and calls describe as ``f(*inputs,
    **attrs)`` and aot_impl as ``f(*inputs, *attrs, outputs, tactic)``. The signatures are built from the record
    (the kernel's pointer arguments, the plugin's attributes) as real ``inspect.Signature`` objects with class
    annotations, so the frontend validates them exactly as it would a written-out function."""
    plugin, op = stage.plugin, stage.plugin.op
    kernel = stage.kernel(plugin.kernel)
    ins = [a for a in kernel.args if a.role == "in"]
    outs = [a for a in kernel.args if a.role == "out"]
    n_in = len(ins)

    def dims_of(inputs: Sequence[Any], attrs: Dict[str, Any]) -> Dict[str, Any]:
        return {name: (inputs[src[0]].shape_expr[src[1]] if isinstance(src, tuple) else _int(attrs[src]))
                for name, src in plugin.dims.items()}

    def out_dtype(arg_type: str, like: Any) -> Any:
        return {"*T": like, "*fp32": trt.float32, "*i32": trt.int32}[arg_type]

    def describe(*inputs: Any, **attrs: Any) -> Any:
        shapes = plugin.outputs(stage.dims(**dims_of(inputs, attrs)))
        return tuple(trtp.from_shape_expr(tuple(shape), dtype=out_dtype(a.type, inputs[0].dtype))
                     for a, shape in zip(outs, shapes))

    def aot(*args: Any) -> Any:
        inputs, values = args[:n_in], args[n_in:n_in + len(plugin.attrs)]
        dims = dims_of(inputs, dict(zip(plugin.attrs, values)))
        art, ptx = store.kernel(op, dtype_of(inputs[0]), target, driver_limit, aligned_dims(op, dims))
        grid, threads, scalars = launch_plan(op, dims, art["constexprs"], art["num_warps"])
        return art["kernel"], ptx, _launch(trtp, grid, threads, art), _scalars(trtp, scalars)

    P = inspect.Parameter
    tensors = [P(a.name[:-4] if a.name.endswith("_ptr") else a.name, P.POSITIONAL_OR_KEYWORD,
                 annotation=trtp.TensorDesc) for a in ins]
    attrs = [P(name, P.POSITIONAL_OR_KEYWORD, annotation=I32) for name in plugin.attrs]
    out_descs: Any = Tuple[tuple([trtp.TensorDesc] * len(outs))]  # Tuple[TensorDesc, ...] of the output count
    describe.__signature__ = inspect.Signature(tensors + attrs, return_annotation=out_descs)  # type: ignore
    aot.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        tensors + attrs + [P("outputs", P.POSITIONAL_OR_KEYWORD, annotation=out_descs),
                           P("tactic", P.POSITIONAL_OR_KEYWORD, annotation=int)],
        return_annotation=Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs])
    describe.__name__ = aot.__name__ = op
    return describe, aot


def check_plugin_nodes(onnx_path: Union[str, Path], registry: Any) -> None:
    """Every custom node of ``onnx_path`` finds its creator in TensorRT's plugin ``registry`` the way the ONNX
    parser looks it up (op type, ``plugin_version`` default "1", ``plugin_namespace`` default ""); ExportError
    naming the file and node otherwise (the parser itself only says "Plugin not found"). Reads the file with the
    standard library (:func:`wmoe.onnx_meta.read_onnx_nodes`): no onnx package on the device that builds."""
    from wmoe.contract import ContractError
    from wmoe.onnx_meta import read_onnx_nodes
    try:
        nodes = read_onnx_nodes(onnx_path, DOMAIN)
    except ContractError as e:
        raise ExportError(str(e)) from None
    for node in nodes:
        ns = node.strings.get("plugin_namespace", b"").decode()
        version = node.strings.get("plugin_version", b"1").decode()
        if registry.get_creator(node.op_type, version, ns) is None:
            raise ExportError(f"{onnx_path}: node {node.name!r} ({node.op_type}, plugin_version {version!r}, "
                              f"plugin_namespace {ns!r}) matches no registered TensorRT plugin creator (ours are "
                              f"{sorted(PLUGINS)} in namespace {DOMAIN!r}): re-export the ONNX with this wmoe")


def _int(attr: Any) -> int:
    """A plugin int attribute (a one-element int32 array) as a Python int (``trtp.SymInt32`` needs a real int)."""
    a = np.asarray(attr).reshape(-1)
    if a.size != 1:
        raise ExportError(f"plugin attribute {attr!r}: expected one integer")
    return int(a[0])


def _launch(trtp, grid: Sequence[Any], threads: int, art: Dict[str, Any]):
    p = trtp.KernelLaunchParams()
    p.grid_x, p.grid_y, p.grid_z = grid
    p.block_x = threads
    p.shared_mem = int(art["shared_bytes"])
    return p


def _scalars(trtp, values: Sequence[Any]):
    extra = trtp.SymIntExprs(len(values))
    for i, v in enumerate(values):
        extra[i] = trtp.SymInt32(v)
    return extra
