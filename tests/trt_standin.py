"""The smallest stand-in for TensorRT's compiled core (``tensorrt.so``, which needs libnvinfer and a GPU) under
which the REAL pure-Python ``tensorrt.plugin`` frontend of the ``tensorrt-cu12-bindings`` wheel runs on a CPU.

Only what the frontend touches is here: enums, plugin fields, the plugin registry, the plugin interface base
classes (empty) and a dimension-expression builder that evaluates eagerly (every expression carries its value, so
a test can read the grid TensorRT would compute). :func:`parse_plugin_node` does what the ONNX parser's fallback
plugin importer does (``onnxOpImporters.cpp``): look the creator up by op type, ``plugin_version`` (default "1")
and the ``plugin_namespace`` attribute (default ""), ignoring the ONNX domain, then pass the node's attributes as
fields typed like the creator's declared fields (an ONNX INT becomes a one-element integer array).
"""
import enum
import importlib
import re
import sys
import types
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np


def _enum(name: str, members: Sequence[str]) -> type:
    return enum.IntEnum(name, {m: i for i, m in enumerate(members)})


DataType = _enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4",
                              "FP4"])
TensorFormat = _enum("TensorFormat", ["LINEAR", "CHW2", "HWC8", "CHW4", "CHW16", "CHW32", "DHWC8", "CDHW32", "HWC",
                                      "DLA_LINEAR", "DLA_HWC4", "HWC16", "DHWC"])
PluginFieldType = _enum("PluginFieldType", ["FLOAT16", "FLOAT32", "FLOAT64", "INT8", "INT16", "INT32", "CHAR",
                                            "DIMS", "UNKNOWN", "BF16", "INT64", "FP8", "INT4", "FP4"])
QuickPluginCreationRequest = _enum("QuickPluginCreationRequest", ["UNKNOWN", "PREFER_JIT", "PREFER_AOT",
                                                                  "STRICT_JIT", "STRICT_AOT"])
TensorRTPhase = _enum("TensorRTPhase", ["BUILD", "RUNTIME"])
DimensionOperation = _enum("DimensionOperation", ["SUM", "PROD", "MAX", "MIN", "SUB", "EQUAL", "LESS",
                                                  "FLOOR_DIV", "CEIL_DIV"])
PluginArgType = _enum("PluginArgType", ["INT"])
PluginArgDataType = _enum("PluginArgDataType", ["INT8", "INT16", "INT32"])

_FIELD_NP = {PluginFieldType.FLOAT16: np.float16, PluginFieldType.FLOAT32: np.float32,
             PluginFieldType.FLOAT64: np.float64, PluginFieldType.INT8: np.int8, PluginFieldType.INT16: np.int16,
             PluginFieldType.INT32: np.int32, PluginFieldType.INT64: np.int64, PluginFieldType.CHAR: np.int8,
             PluginFieldType.UNKNOWN: np.uint8}
_NPTYPE = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
           DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}


class PluginField:
    """Like the binding: ``data`` is a numpy array typed by ``type`` (bytes are viewed, arrays cast)."""

    def __init__(self, name: str = "", data=None, type: PluginFieldType = PluginFieldType.UNKNOWN) -> None:
        self.name, self.type = name, type
        dt = _FIELD_NP.get(type, np.uint8)
        if isinstance(data, (bytes, bytearray)):
            self.data = np.frombuffer(bytes(data), dtype=dt)
        else:
            self.data = np.asarray([] if data is None else data).astype(dt)
        self.size = self.data.size


class PluginFieldCollection(list):
    pass


class IDimensionExpr:
    """A dimension expression that knows its value; constant only when built from constants."""

    def __init__(self, value: int, constant: bool) -> None:
        self.value, self.constant = int(value), constant

    def is_constant(self) -> bool:
        return self.constant

    def get_constant_value(self) -> int:
        if not self.constant:
            raise RuntimeError("not a build-time constant")
        return self.value

    def is_size_tensor(self) -> bool:
        return False


_OPS = {DimensionOperation.SUM: lambda a, b: a + b, DimensionOperation.PROD: lambda a, b: a * b,
        DimensionOperation.MAX: max, DimensionOperation.MIN: min, DimensionOperation.SUB: lambda a, b: a - b,
        DimensionOperation.EQUAL: lambda a, b: int(a == b), DimensionOperation.LESS: lambda a, b: int(a < b),
        DimensionOperation.FLOOR_DIV: lambda a, b: a // b, DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b)}


class IExprBuilder:
    def constant(self, value: int) -> IDimensionExpr:
        if not isinstance(value, (int, np.integer)):
            raise TypeError(f"IExprBuilder.constant(): expected an int, got {type(value)}")
        return IDimensionExpr(value, True)

    def operation(self, op, a: IDimensionExpr, b: IDimensionExpr) -> IDimensionExpr:
        if not isinstance(a, IDimensionExpr) or not isinstance(b, IDimensionExpr):
            raise TypeError(f"IExprBuilder.operation(): operands must be IDimensionExpr, got {type(a)}, {type(b)}")
        return IDimensionExpr(_OPS[op](a.value, b.value), a.constant and b.constant)

    def dim(self, value: int) -> IDimensionExpr:
        """A runtime (non-constant) input dimension; not part of TensorRT's API, the test's way to make one."""
        return IDimensionExpr(value, False)


class DimsExprs(list):
    def __init__(self, n: int = 0) -> None:
        super().__init__([None] * n)


class Dims(tuple):
    MAX_DIMS = 8

    def __new__(cls, shape=()):
        return super().__new__(cls, (0,) * shape if isinstance(shape, int) else tuple(shape))


class PluginTensorDesc:
    def __init__(self, dims: Sequence[int] = (), type: DataType = DataType.FLOAT,
                 format: TensorFormat = TensorFormat.LINEAR, scale: float = 1.0) -> None:
        self.dims, self.type, self.format, self.scale = Dims(dims), type, format, scale


class DynamicPluginTensorDesc:
    def __init__(self, desc: PluginTensorDesc, min=None, opt=None, max=None) -> None:
        self.desc = desc
        self.min, self.opt, self.max = (Dims(v if v is not None else desc.dims) for v in (min, opt, max))


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity

    def log(self, severity: int, msg: str) -> None:
        pass


class _Interface:
    def __init__(self) -> None:
        pass


class IPluginV3(_Interface): ...
class IPluginV3QuickCore(_Interface): ...
class IPluginV3QuickBuild(_Interface): ...
class IPluginV3QuickRuntime(_Interface): ...
class IPluginV3QuickAOTBuild(_Interface): ...
class IPluginCreatorV3Quick(_Interface): ...
class ISymExpr(_Interface): ...
class ITensor(_Interface): ...


class PluginRegistry:
    """Creators keyed like TensorRT's registry: (name, version, namespace); a second registration is refused."""

    def __init__(self) -> None:
        self.creators: Dict[Tuple[str, str, str], object] = {}

    def register_creator(self, creator, namespace: str) -> bool:
        key = (creator.name, creator.plugin_version, namespace)
        if key in self.creators:
            return False
        self.creators[key] = creator
        return True

    def get_creator(self, name: str, version: str, namespace: str = ""):
        return self.creators.get((name, version, namespace))

    @property
    def all_creators(self) -> List[object]:
        return list(self.creators.values())


def frontend_dirs() -> Dict[str, Path]:
    """``{version: tensorrt_bindings dir}``: the wheel in the venv (dev extra) and those under .venv/trt-frontends."""
    import importlib.util
    found = []
    spec = importlib.util.find_spec("tensorrt_bindings")  # locates without importing (the core would not load)
    if spec is not None and spec.submodule_search_locations:
        found.append(Path(list(spec.submodule_search_locations)[0]))
    extra = Path(sys.prefix) / "trt-frontends"
    if extra.is_dir():
        found += sorted(extra.glob("*/tensorrt_bindings"))
    out = {}
    for d in found:
        m = re.search(r'^__version__\s*=\s*"([^"]+)"', (d / "__init__.py").read_text(), re.M)
        if m and (d / "plugin" / "__init__.py").is_file():
            out[m.group(1)] = d
    return out


def load_frontend(bindings_dir: Path) -> Tuple[types.ModuleType, types.ModuleType]:
    """Install the stand-in as ``tensorrt`` (with the wheel's folder as its package path, so ``tensorrt.plugin`` is
    the wheel's real code) and import ``tensorrt.plugin`` afresh. Returns ``(trt, trtp)``; undo with
    :func:`unload_frontend`."""
    unload_frontend()
    trt = types.ModuleType("tensorrt")
    trt.__path__ = [str(bindings_dir)]
    m = re.search(r'^__version__\s*=\s*"([^"]+)"', (bindings_dir / "__init__.py").read_text(), re.M)
    trt.__version__ = m.group(1)
    this = sys.modules[__name__]
    for name in ("DataType", "TensorFormat", "PluginFieldType", "QuickPluginCreationRequest", "TensorRTPhase",
                 "DimensionOperation", "PluginArgType", "PluginArgDataType", "PluginField", "PluginFieldCollection",
                 "IDimensionExpr", "IExprBuilder", "DimsExprs", "Dims", "PluginTensorDesc",
                 "DynamicPluginTensorDesc", "Logger", "IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild",
                 "IPluginV3QuickRuntime", "IPluginV3QuickAOTBuild", "IPluginCreatorV3Quick", "ISymExpr", "ITensor"):
        setattr(trt, name, getattr(this, name))
    for alias, dt in (("float32", "FLOAT"), ("float16", "HALF"), ("int8", "INT8"), ("int32", "INT32"),
                      ("bool", "BOOL"), ("uint8", "UINT8"), ("bfloat16", "BF16"), ("int64", "INT64"),
                      ("fp8", "FP8"), ("int4", "INT4")):
        setattr(trt, alias, DataType[dt])
    registry = PluginRegistry()
    trt.get_plugin_registry = lambda: registry
    trt.nptype = lambda dt: _NPTYPE[dt]
    sys.modules["tensorrt"] = trt
    trtp = importlib.import_module("tensorrt.plugin")
    return trt, trtp


def unload_frontend() -> None:
    for k in [k for k in sys.modules if k == "tensorrt" or k.startswith("tensorrt.")]:
        del sys.modules[k]


def parse_plugin_node(trt, node) -> Tuple[object, object]:
    """What the ONNX parser does with a custom node: ``(creator, plugin)``; RuntimeError "Plugin not found" when
    no creator matches (name, plugin_version, plugin_namespace)."""
    import onnx
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    version = attrs.pop("plugin_version", b"1")
    namespace = attrs.pop("plugin_namespace", b"")
    version = version.decode() if isinstance(version, bytes) else str(version)
    namespace = namespace.decode() if isinstance(namespace, bytes) else str(namespace)
    creator = trt.get_plugin_registry().get_creator(node.op_type, version, namespace)
    if creator is None:
        raise RuntimeError(f"Plugin not found: {node.op_type}, version {version}, namespace {namespace!r}")
    fields = []
    for declared in creator.field_names:
        if declared.name not in attrs:
            continue  # the parser warns "Attribute ... not found in plugin node!" and goes on
        value = attrs[declared.name]
        if declared.type == PluginFieldType.CHAR:
            data = value if isinstance(value, bytes) else str(value).encode()
            fields.append(PluginField(declared.name, data, PluginFieldType.CHAR))
        else:
            fields.append(PluginField(declared.name, np.atleast_1d(np.asarray(value)), declared.type))
    # TensorRT's quick-plugin bridge hands the creator its own name and namespace (the frontend keys its registry
    # by them), not the ONNX node's name
    plugin = creator.create_plugin(creator.name, namespace, PluginFieldCollection(fields), TensorRTPhase.BUILD,
                                   QuickPluginCreationRequest.PREFER_AOT)
    return creator, plugin


class LaunchParams:
    """What ``get_launch_params`` fills in (TensorRT's ``KernelLaunchParams`` on the C++ side)."""
    grid_x = grid_y = grid_z = block_x = block_y = block_z = shared_mem = None


class SymExprSetter(dict):
    nbSymExprs = 0


def build_plugin(trt, plugin, inputs: Sequence[Tuple[Tuple[int, ...], DataType]], dynamic_batch: bool = True
                 ) -> Dict[str, object]:
    """Drive ``plugin`` through the calls TensorRT's builder makes for concrete input shapes: output types and
    shapes, format combinations, tactic, launch parameters and kernel. Values come back evaluated."""
    builder = IExprBuilder()
    types_ = [dt for _, dt in inputs]
    out_types = plugin.get_output_data_types(types_, [len(s) for s, _ in inputs])
    in_exprs = []
    for shape, _ in inputs:
        e = DimsExprs(len(shape))
        for j, d in enumerate(shape):
            e[j] = builder.dim(d) if (j == 0 and dynamic_batch) else builder.constant(d)
        in_exprs.append(e)
    out_exprs = plugin.get_output_shapes(in_exprs, [], builder)
    out_shapes = [tuple(e.value for e in exprs) for exprs in out_exprs]
    n_in = len(inputs)
    descs = [PluginTensorDesc(s, t) for s, t in inputs] + [PluginTensorDesc(s, t)
                                                             for s, t in zip(out_shapes, out_types)]
    dyn = [DynamicPluginTensorDesc(d) for d in descs]
    combos = plugin.get_supported_format_combinations(dyn, n_in)
    plugin.configure_plugin(dyn[:n_in], dyn[n_in:])
    tactics = plugin.get_valid_tactics()
    plugin.set_tactic(tactics[0] if tactics else 0)
    lp, setter = LaunchParams(), SymExprSetter()
    plugin.get_launch_params(in_exprs, dyn, n_in, lp, setter, builder)
    name, ptx = plugin.get_kernel(descs[:n_in], descs[n_in:])

    def val(e):  # 10.x stores the IDimensionExpr, 11.x the ISymExpr wrapping it
        return e.expr.value if hasattr(e, "expr") else e.value

    return {"out_types": list(out_types), "out_shapes": out_shapes,
            "combos": [(c.type, c.format) for c in combos],
            "grid": (val(lp.grid_x), val(lp.grid_y), val(lp.grid_z)), "block": val(lp.block_x),
            "block_yz": (val(lp.block_y), val(lp.block_z)), "shared_mem": val(lp.shared_mem), "n_extra": setter.nbSymExprs,
            "extra": [setter[i].expr.value for i in range(setter.nbSymExprs)],
            "extra_dtypes": [setter[i].dtype for i in range(setter.nbSymExprs)], "kernel": name.decode() if isinstance(name, bytes) else name,
            "ptx": ptx.decode() if isinstance(ptx, bytes) else ptx}

