"""The spec of a fused stage's kernels: the one place a launch is described.

:mod:`wmoe.kernels.stages` holds one :class:`StageSpec` per stage (``wcma_frequency``, ``wcma_attention``,
``moe_experts``) listing a :class:`KernelSpec` per kernel: the arguments in launch order with their roles (inputs,
int32 scalars, outputs -- what a TensorRT AOT plugin can launch), the constexprs, warps and stages per target, the
grid as a function of the shapes, and the constexprs that follow from the shapes; the ``@triton.jit`` function
itself is named (``"wcma_frequency_triton:_wcma_main_kernel"``) and imported on first use (:attr:`KernelSpec.fn`).
From it:

* the launcher (:func:`launch`, called by the stage's ``*_triton`` function) on a CUDA device or the interpreter;
* the AOT compiler (:mod:`wmoe.kernels.aot`: signature, constexprs, warps/stages, a 16-byte-aligned variant);
* the TensorRT plugin's launch parameters (:func:`launch_plan`: grid, threads, int32 scalars), where the dims are
  TensorRT shape expressions -- the same formulas, since they only use ``+ - * //``.

This module and :mod:`wmoe.kernels.stages` import neither torch nor Triton (:func:`device_target` and
:func:`launch` need them, and import them when called): the TensorRT engine build runs where neither is installed.

Targets: ``sm_80`` (A100), ``sm_87`` (Jetson Orin), ``sm_90`` (H100), and ``default`` (any other device and the
CPU interpreter). Configurations were chosen from the compiler's resource report (no GPU was available to
measure; see docs/kernels.md) and are pinned by tests (registers, spills, MMA kind, vector loads).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

TARGETS: Dict[str, int] = {"sm_80": 80, "sm_87": 87, "sm_90": 90}
#: What the AOT compiler builds (TensorRT plugin kernels): the tuned targets, plus Ampere and Ada workstation/
#: datacenter GPUs (sm_86: A10/A40/RTX 30xx, sm_89: L4/L40/RTX 40xx), which take the ``default`` tiles (as the
#: Triton launcher gives them at run time, :func:`device_target`): 48 KB of shared memory at most, checked by ptxas.
AOT_TARGETS: Dict[str, int] = {**TARGETS, "sm_86": 86, "sm_89": 89}
DEFAULT = "default"
ROLES = ("in", "scalar", "out")


def cdiv(a: Any, b: int) -> Any:
    """Ceiling division for ints and TensorRT symbolic shape expressions alike."""
    return (a + (b - 1)) // b


def next_pow2(n: int, lo: int = 1) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


@dataclass(frozen=True)
class Arg:
    """One kernel argument. ``type``: ``*T`` (a pointer in the stage's dtype), ``*fp32``, ``*i32`` or ``i32``."""
    name: str
    role: str
    type: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"argument {self.name}: role {self.role!r} not in {ROLES}")
        if (self.role == "scalar") != (self.type == "i32"):
            raise ValueError(f"argument {self.name}: scalars are int32 and only scalars are int32 ({self.type})")


def ins(*names: str, t: str = "*fp32") -> List[Arg]:
    return [Arg(n, "in", t) for n in names]


def scalars(*names: str) -> List[Arg]:
    return [Arg(n, "scalar", "i32") for n in names]


def outs(*names: str, t: str = "*fp32") -> List[Arg]:
    return [Arg(n, "out", t) for n in names]


@dataclass(frozen=True)
class Config:
    """Tile sizes and launch options of one kernel on one target."""
    constexprs: Mapping[str, Any]
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class KernelSpec:
    """How one ``@triton.jit`` kernel is launched. Scalar arguments take the value of the dim of the same name.

    ``impl``: the kernel as ``"<module>:<function>"`` of :mod:`wmoe.kernels` (``"moe_experts_triton:_router_kernel"``),
    imported when it is launched or compiled (:attr:`fn`), so the spec itself needs neither torch nor Triton.
    ``configs``: per target (``sm_80``/``sm_87``/``sm_90``/``default``) and optionally per dtype (key
    ``"sm_90/fp32"`` overrides ``"sm_90"`` for fp32). ``shape_constexprs``: constexprs that follow from the dims
    (``BLOCK_D = next_pow2(D)``), capacities: the kernel masks, so a compiled value serves every smaller dim;
    ``aot_dims`` the dims the AOT artifacts are compiled for (the model defaults).
    ``options``: run-time constexprs with their defaults (``FP32``: the fp32 GEMMs' input precision).
    ``derived``: dims that follow from the dims and the chosen tiles (``NT = ⌈h·w/BLOCK_M⌉``).
    ``aligned``: the scalar dims that, with every pointer 16-byte aligned, the AOT ``a16`` variant assumes
    divisible by 16 (vectorized loads and ``cp.async``); empty = no aligned variant.
    """
    name: str
    impl: str
    args: Tuple[Arg, ...]
    configs: Mapping[str, Config]
    grid: Callable[[Mapping[str, Any], Mapping[str, Any]], Tuple[Any, ...]]
    shape_constexprs: Callable[[Mapping[str, int]], Dict[str, int]] = lambda d: {}
    options: Mapping[str, Any] = field(default_factory=dict)
    derived: Callable[[Mapping[str, Any], Mapping[str, Any]], Dict[str, Any]] = lambda d, c: {}
    aot_dims: Mapping[str, int] = field(default_factory=dict)
    aligned: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))
        roles = [ROLES.index(a.role) for a in self.args]
        if roles != sorted(roles):
            raise ValueError(f"{self.name}: arguments must be ordered inputs, int32 scalars, outputs")
        module, sep, function = self.impl.partition(":")
        if not (sep and module.isidentifier() and function.isidentifier()):
            raise ValueError(f"{self.name}: impl {self.impl!r} is not '<module>:<function>' of wmoe.kernels")
        if set(self.aligned) - {a.name for a in self.args if a.role == "scalar"}:
            raise ValueError(f"{self.name}: aligned dims {self.aligned} must be scalar arguments")

    @property
    def fn(self) -> Any:
        """The ``@triton.jit`` kernel (imports its module: torch and Triton), checked against this spec on first
        use: its parameters must be the spec's arguments, in order, then exactly its constexprs."""
        fn = self.__dict__.get("_fn")
        if fn is None:
            module, _, function = self.impl.partition(":")
            fn = getattr(importlib.import_module(f".{module}", __package__), function)
            self.check_params(list(getattr(fn, "arg_names", ())))
            object.__setattr__(self, "_fn", fn)  # a cache, not a field: frozen, compared and printed without it
        return fn

    def check_params(self, params: Sequence[str]) -> None:
        """ValueError unless ``params`` (a kernel's parameter names) are the spec's arguments, then its constexprs."""
        names = [a.name for a in self.args]
        consts = (set(self.config(DEFAULT, "fp16").constexprs) | set(self.shape_constexprs(dict(self.aot_dims)))
                  | set(self.options))
        if list(params[:len(names)]) != names or set(params[len(names):]) != consts:
            raise ValueError(f"{self.name}: spec arguments {names} + constexprs {sorted(consts)} do not match the "
                             f"parameters {list(params)} of the kernel {self.impl}")

    def config(self, target: str, dtype: str) -> Config:
        for key in (f"{target}/{dtype}", target, f"{DEFAULT}/{dtype}", DEFAULT):
            if key in self.configs:
                return self.configs[key]
        raise KeyError(f"{self.name}: no configuration for {target}")

    def constexprs(self, target: str, dtype: str, dims: Mapping[str, Any], **extra: Any) -> Dict[str, Any]:
        unknown = set(extra) - set(self.options)
        if unknown:
            raise TypeError(f"{self.name}: unknown run-time constexprs {sorted(unknown)} (has {sorted(self.options)})")
        return {**self.config(target, dtype).constexprs, **self.shape_constexprs(dims), **self.options, **extra}

    def all_dims(self, dims: Mapping[str, Any], constexprs: Mapping[str, Any]) -> Dict[str, Any]:
        return {**dims, **self.derived(dims, constexprs)}

    def scalar_values(self, dims: Mapping[str, Any]) -> List[Any]:
        try:
            return [dims[a.name] for a in self.args if a.role == "scalar"]
        except KeyError as e:
            raise KeyError(f"{self.name}: dim {e} missing (have {sorted(dims)})") from None


def load(ref: str) -> Any:
    """The function ``"<module>:<function>"`` of :mod:`wmoe.kernels` names (imports its module)."""
    module, _, function = ref.partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), function)


def _check_ref(owner: str, what: str, ref: Optional[str]) -> None:
    if ref is None:
        return
    module, sep, function = ref.partition(":")
    if not (sep and module.isidentifier() and function.isidentifier()):
        raise ValueError(f"{owner}: {what} {ref!r} is not '<module>:<function>' of wmoe.kernels")


@dataclass(frozen=True)
class CustomOp:
    """The stage as one ``torch.library`` custom op ``wmoe::<stage>`` (:mod:`wmoe.kernels.ops` registers every
    stage that has one), so ``torch.compile``/``torch.export`` keep it as one node and the plugin ONNX flavor can
    translate it. ``schema``: the arguments and result in torch's schema syntax, without the kernel choice (two
    trailing ``str`` arguments, ``kernels`` and ``fp32``, are appended: the op runs what the caller chose).
    ``fake``: the meta implementation (``"<module>:<function>"``: outputs of the right shape, not computed)."""
    schema: str
    fake: str


@dataclass(frozen=True)
class Plugin:
    """The stage's TensorRT AOT plugin: one custom ONNX node (domain and plugin namespace ``wmoe``) that launches
    the stage's kernel ``kernel`` (a TensorRT AOT plugin launches exactly one kernel). Everything the plugin modules
    need, as data: :mod:`wmoe.export.trt_plugins` registers it with ``tensorrt.plugin`` and
    :mod:`wmoe.export.plugin_graph` writes it, both by looping over the stages.

    * ``op``: the ONNX op type = TensorRT plugin name. Its inputs and outputs are the kernel's pointer arguments
      (names without ``_ptr``; ``*T`` in the kernel dtype, ``*fp32``/``*i32`` fixed);
    * ``attrs``: its int attributes, in order (declared int32 arrays, see trt_plugins);
    * ``dims``: where each given dim of the stage comes from: ``(input index, axis)`` of a tensor's shape, or an
      attribute name;
    * ``outputs``: the output shapes from the full dims (:meth:`StageSpec.dims`; ints or TensorRT shape
      expressions, so only ``+ - * //``), one tuple per output;
    * ``translation``: ``"<module>:<function>"``, the custom op written as this node plus standard ONNX ops
      (onnxscript), called as ``translation(node, op, *the custom op's arguments)`` where ``node(*inputs,
      **attrs)`` makes the plugin node (it adds ``plugin_namespace``) and ``op`` is onnxscript's opset 18;
    * ``reference``: ``"<module>:<function>"``, what the kernel computes in float64 from the node's inputs and
      attributes (the node's implementation for ``onnx.reference.ReferenceEvaluator``)."""
    op: str
    kernel: str
    attrs: Tuple[str, ...]
    dims: Mapping[str, Any]
    outputs: Callable[[Mapping[str, Any]], Tuple[Tuple[Any, ...], ...]]
    translation: str
    reference: str


@dataclass(frozen=True)
class StageSpec:
    """A fused stage, as one record: its kernels in launch order, how the full set of dims follows from the given
    ones (``derive``: e.g. ``h = ⌈H/2⌉``; it must use only ``+ - * //`` so shape expressions work too), the launcher
    (``"<module>:<function>"``: allocates the outputs, launches the kernels; takes ``fp32=``), the PyTorch
    reference (same arguments: the oracle, also what the CPU and training run), optionally the reference to use
    while tracing (no data-dependent shapes), the custom op (:class:`CustomOp`) and the TensorRT plugin
    (:class:`Plugin`). The entry point :func:`wmoe.kernels.dispatch.run_stage` (``wmoe.kernels.<stage>``), the
    custom ops, the AOT compiler and the TensorRT plugins all loop over these records."""
    name: str
    kernels: Tuple[KernelSpec, ...]
    derive: Callable[[Dict[str, Any]], Dict[str, Any]] = lambda d: d
    launcher: Optional[str] = None
    reference: Optional[str] = None
    trace_reference: Optional[str] = None
    op: Optional[CustomOp] = None
    plugin: Optional[Plugin] = None

    def __post_init__(self) -> None:
        for what in ("launcher", "reference", "trace_reference"):
            _check_ref(self.name, what, getattr(self, what))
        if self.op is not None:
            _check_ref(self.name, "op fake", self.op.fake)
        if self.plugin is not None:
            self.kernel(self.plugin.kernel)  # KeyError naming the stage's kernels
            _check_ref(self.name, "plugin translation", self.plugin.translation)
            _check_ref(self.name, "plugin reference", self.plugin.reference)

    def kernel(self, name: str) -> KernelSpec:
        for k in self.kernels:
            if k.name == name:
                return k
        raise KeyError(f"stage {self.name} has no kernel {name!r} (has {[k.name for k in self.kernels]})")

    def dims(self, **given: Any) -> Dict[str, Any]:
        return self.derive(dict(given))


def device_target(device: Any) -> str:
    """The config key for a tensor's device: ``sm_80``/``sm_87``/``sm_90``, or ``default`` for every other GPU
    (sm_75, sm_86, sm_89, ...; its tiles fit 48 KB of shared memory) and the CPU interpreter."""
    import torch
    if getattr(device, "type", device) != "cuda":
        return DEFAULT
    major, minor = torch.cuda.get_device_capability(device)
    if major == 9:
        return "sm_90"
    if (major, minor) == (8, 7):
        return "sm_87"
    if major == 8 and minor == 0:
        return "sm_80"
    return DEFAULT


def launch(k: KernelSpec, tensors: Mapping[str, Any], dims: Mapping[str, Any], dtype: str,
           target: Optional[str] = None, **extra: Any) -> None:
    """Launch ``k`` with its arguments from ``tensors`` (pointers, by argument name) and ``dims`` (scalars), the
    config of ``target`` (default: the device's), the grid of the spec. ``extra``: run-time constexprs (``FP32``)."""
    first = next(tensors[a.name] for a in k.args if a.role == "in")
    target = target or device_target(first.device)
    cfg = k.config(target, dtype)
    consts = k.constexprs(target, dtype, dims, **extra)
    dims = k.all_dims(dims, consts)
    grid = tuple(int(g) for g in k.grid(dims, consts))
    args = [int(dims[a.name]) if a.role == "scalar" else tensors[a.name] for a in k.args]
    k.fn[grid](*args, **consts, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def launch_plan(k: KernelSpec, dims: Mapping[str, Any], constexprs: Mapping[str, Any], num_warps: int
                ) -> Tuple[Tuple[Any, Any, Any], int, List[Any]]:
    """``(grid (x, y, z), threads per block, int32 scalars in kernel order)`` for the compiled ``constexprs``
    (a manifest entry's); ``dims`` are ints or TensorRT shape expressions. A dim whose shape-dependent constexpr
    exceeds the compiled one (``D = 300`` against ``BLOCK_D = 256``) is an error: recompile."""
    known = {n: v for n, v in dims.items() if isinstance(v, int)}
    try:
        need = k.shape_constexprs(known)
    except KeyError:  # a dim is symbolic: the shape-dependent constexprs follow from attributes only
        need = {}
    for name, v in need.items():  # capacities (BLOCK_D >= D, masked): a larger compiled one serves too
        if constexprs.get(name, 0) < v:
            raise ValueError(f"{k.name}: dims {known} need {name}={v}, the compiled kernel has "
                             f"{name}={constexprs.get(name)}: recompile it (python -m wmoe.kernels.aot)")
    dims = k.all_dims(dims, constexprs)
    grid = tuple(k.grid(dims, constexprs)) + (1, 1)
    return grid[:3], 32 * num_warps, k.scalar_values(dims)
