"""Behaviour inside the generated TensorRT double (:mod:`trt_double`): what the tests need TensorRT to DO.

Every public member here must exist in the generated surface of the TensorRT version being generated (checked by
:func:`trt_double.generate`, which refuses anything else); names starting with one underscore are the double's
private state. What each part does:

* plugin-frontend core: plugin fields typed like the binding (numpy arrays), field collections, dimension
  expressions that evaluate eagerly (each carries its value, so a test can read the grid TensorRT would compute),
  ``Dims``/``DimsExprs``, tensor descriptors, ``KernelLaunchParams``/``ISymExprs`` as the frontend fills them, and
  a plugin registry keyed (name, version, namespace) that refuses a second registration;
* builder: ``OnnxParser.parse_from_file`` reads the ONNX with the ``onnx`` package (inputs, outputs, dtypes,
  dynamic dims as -1) and, for every custom-domain node, does what the parser's fallback plugin importer does: look
  the creator up by op type, ``plugin_version`` (default "1") and ``plugin_namespace`` (default ""), create the
  plugin through the real ``tensorrt.plugin`` frontend with the node's attributes as typed fields ("Plugin not
  found" otherwise). ``IOptimizationProfile`` validates with ``__bool__`` (TensorRT's documented partial check);
  ``build_serialized_network`` checks every dynamic input has a shape in every profile, drives each plugin through
  the builder's calls at the profile's opt shape (output types and shapes, formats, tactic, launch parameters, AOT
  kernel and PTX) and serializes a blob: a header (TensorRT version, I/O, profiles, plugin kernels) + the ONNX;
* runtime: ``Runtime.deserialize_cuda_engine`` refuses a blob of another TensorRT version (returns None, as
  TensorRT does); ``IExecutionContext`` checks shapes against the active profile, needs every tensor address, and
  ``execute_async_v3`` reads the input from the device address, runs the ONNX with ONNX Runtime (portable flavor:
  real numbers) or writes zeros of the right shapes and dtypes (plugin flavor: ONNX Runtime cannot run the custom
  nodes; the shapes, dtypes and the data path are what is checked), and writes the outputs to their addresses. With
  the CUDA double installed (:mod:`cuda_double`) the work is enqueued on its stream (so CUDA-graph capture records
  it) and every address must be one of its device allocations.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import struct
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np


def T() -> Any:
    """The generated core module (``tensorrt.tensorrt``) currently loaded."""
    return sys.modules["tensorrt.tensorrt"]


def new(cls: type, **state: Any) -> Any:
    """An instance made the way TensorRT makes it internally (no Python constructor), with private state."""
    obj = object.__new__(cls)
    for k, v in state.items():
        object.__setattr__(obj, k, v)
    return obj


def _log(logger: Any, severity: str, msg: str) -> None:
    logger.log(getattr(T().ILogger.Severity, severity), msg)


# -- plugin-frontend core -------------------------------------------------------------------------------------------
_FIELD_NP = {"FLOAT16": np.float16, "FLOAT32": np.float32, "FLOAT64": np.float64, "INT8": np.int8,
             "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "CHAR": np.int8, "UNKNOWN": np.uint8}


class PluginField:
    def __init__(self, name: str = "", data: Any = None, type: Any = None) -> None:
        self._name = name
        self.type = type if type is not None else T().PluginFieldType.UNKNOWN
        self._set(data)

    def _set(self, data: Any) -> None:
        dt = _FIELD_NP.get(self.type.name, np.uint8)
        if isinstance(data, (bytes, bytearray)):
            self._data = np.frombuffer(bytes(data), dtype=dt)
        else:
            self._data = np.asarray([] if data is None else data).astype(dt)
        self.size = int(self._data.size)

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._set(value)


class PluginFieldCollection:
    def __init__(self, arg0: Any = None) -> None:
        self._items = list(arg0 or [])

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: Any) -> Any:
        return self._items[i]

    def __iter__(self) -> Any:
        return iter(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def append(self, x: Any) -> None:
        self._items.append(x)


class PluginFieldCollection_:
    def __init__(self, arg0: Any) -> None:
        self._items = list(arg0)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self._items):
            raise IndexError(i)
        return self._items[i]


class IDimensionExpr:
    def is_constant(self) -> bool:
        return self._constant

    def get_constant_value(self) -> int:
        if not self._constant:
            raise RuntimeError("not a build-time constant")
        return self._value

    def is_size_tensor(self) -> bool:
        return False


def dim_expr(value: int, constant: bool) -> Any:
    """How TensorRT's builder hands a plugin an input dimension (a runtime one when not ``constant``)."""
    return new(T().IDimensionExpr, _value=int(value), _constant=constant)


_OPS = {"SUM": lambda a, b: a + b, "PROD": lambda a, b: a * b, "MAX": max, "MIN": min, "SUB": lambda a, b: a - b,
        "EQUAL": lambda a, b: int(a == b), "LESS": lambda a, b: int(a < b), "FLOOR_DIV": lambda a, b: a // b,
        "CEIL_DIV": lambda a, b: -(-a // b)}


class IExprBuilder:
    def __init__(self) -> None:
        pass

    def constant(self, arg0: int) -> Any:
        if not isinstance(arg0, (int, np.integer)) or isinstance(arg0, bool):
            raise TypeError(f"IExprBuilder.constant(): incompatible function arguments ({type(arg0).__name__})")
        return dim_expr(int(arg0), True)

    def operation(self, arg0: Any, arg1: Any, arg2: Any) -> Any:
        E = T().IDimensionExpr
        if not isinstance(arg1, E) or not isinstance(arg2, E) or not isinstance(arg0, T().DimensionOperation):
            raise TypeError("IExprBuilder.operation(): incompatible function arguments")
        return dim_expr(_OPS[arg0.name](arg1._value, arg2._value), arg1._constant and arg2._constant)


class DimsExprs:
    def __init__(self, arg0: Any = None) -> None:
        self._items = [None] * arg0 if isinstance(arg0, int) else list(arg0 or [])

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Any:
        if not -len(self._items) <= i < len(self._items):
            raise IndexError(i)
        return self._items[i]

    def __setitem__(self, i: int, v: Any) -> None:
        self._items[i] = v


class Dims:
    def __init__(self, shape: Any = None) -> None:
        self._d = [int(x) for x in (shape or [])]
        if len(self._d) > 8:
            raise ValueError("Dims: more than MAX_DIMS (8) dimensions")

    def __len__(self) -> int:
        return len(self._d)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return tuple(self._d[i])
        if not -len(self._d) <= i < len(self._d):
            raise IndexError(i)
        return self._d[i]

    def __setitem__(self, i: Any, v: Any) -> None:
        self._d[i] = v

    def __eq__(self, other: Any) -> bool:
        return tuple(self._d) == tuple(other)

    def __repr__(self) -> str:
        return f"({', '.join(map(str, self._d))})"

    def __str__(self) -> str:
        return self.__repr__()


def dims(shape: Any) -> Any:
    return T().Dims(list(shape))


class PluginTensorDesc:
    def __init__(self) -> None:
        self.dims, self.type, self.format, self.scale = T().Dims(), T().DataType.FLOAT, T().TensorFormat.LINEAR, 1.0


class DynamicPluginTensorDesc:
    def __init__(self) -> None:
        self.desc = T().PluginTensorDesc()
        self.min, self.opt, self.max = T().Dims(), T().Dims(), T().Dims()


class ISymExprs:
    def __len__(self) -> int:
        return self.nbSymExprs

    def __getitem__(self, i: int) -> Any:
        return self.__dict__.setdefault("_items", {})[i]

    def __setitem__(self, i: int, v: Any) -> bool:
        self.__dict__.setdefault("_items", {})[i] = v
        return True


class ILogger:
    def __init__(self) -> None:
        pass

    def log(self, severity: Any, msg: str) -> None:
        self.__dict__.setdefault("_messages", []).append((severity, msg))


class Logger(ILogger):
    def __init__(self, min_severity: Any = None) -> None:
        self.min_severity = min_severity if min_severity is not None else T().ILogger.Severity.WARNING

    def log(self, severity: Any, msg: str) -> None:
        self.__dict__.setdefault("_messages", []).append((severity, msg))
        if int(severity) <= int(self.min_severity):
            print(f"[TensorRT double] {severity.name}: {msg}", flush=True)


class IPluginRegistry:
    def register_creator(self, creator: Any, plugin_namespace: str = "") -> bool:
        key = (creator.name, creator.plugin_version, plugin_namespace)
        creators = self.__dict__.setdefault("_creators", {})
        if key in creators:
            return False
        creators[key] = creator
        return True

    def get_creator(self, type: str, version: str, plugin_namespace: str = "") -> Any:
        return self.__dict__.setdefault("_creators", {}).get((type, version, plugin_namespace))

    @property
    def all_creators(self) -> List[Any]:
        return list(self.__dict__.setdefault("_creators", {}).values())


class _Module:
    """Module-level functions of ``tensorrt.tensorrt``."""

    @staticmethod
    def get_plugin_registry() -> Any:
        core = T()
        reg = getattr(core, "_registry", None)
        if reg is None:
            reg = core._registry = new(core.IPluginRegistry)
        return reg


# -- build ------------------------------------------------------------------------------------------------------------
_ONNX_DT = {1: "FLOAT", 10: "HALF", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 16: "BF16"}
_NP = {"FLOAT": np.float32, "HALF": np.float16, "UINT8": np.uint8, "INT8": np.int8, "INT32": np.int32,
       "INT64": np.int64, "BOOL": np.bool_}
MAGIC = b"WMOE-TRT-DOUBLE\0"


def _dtype(name: str) -> Any:
    return getattr(T().DataType, name)


class ITensor:
    pass


def _tensor(name: str, shape: List[int], dtype: str) -> Any:
    t = new(T().ITensor)
    t.name, t.shape, t.dtype = name, dims(shape), _dtype(dtype)
    return t


class INetworkDefinition:
    def get_input(self, index: int) -> Any:
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index: int) -> Any:
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)


class IOptimizationProfile:
    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        D = T().Dims
        if not all(isinstance(d, D) for d in (min, opt, max)):  # pybind11 converts lists/tuples implicitly
            min, opt, max = (d if isinstance(d, D) else dims(d) for d in (min, opt, max))
        self.__dict__.setdefault("_shapes", {})[input] = (min, opt, max)

    def get_shape(self, input: str) -> List[Any]:
        return list(self.__dict__.get("_shapes", {}).get(input, ()))

    def __bool__(self) -> bool:
        for lo, opt, hi in self.__dict__.get("_shapes", {}).values():
            if not len(lo) == len(opt) == len(hi):
                return False
            if not all(0 <= a <= b <= c for a, b, c in zip(lo, opt, hi)):
                return False
        return True


class IHostMemory:
    @property
    def nbytes(self) -> int:
        return len(self._data)

    @property
    def dtype(self) -> Any:
        return T().DataType.UINT8

    def __bytes__(self) -> bytes:  # stands in for the stub's __buffer__ (see trt_double)
        return bytes(self._data)


def _host_memory(data: bytes) -> Any:
    return new(T().IHostMemory, _data=bytes(data))


class ITimingCache:
    def serialize(self) -> Any:
        return _host_memory(b"WMOE-TC\0" + T().__trt_version__.encode() + b"\0" + self._data)


class IBuilderConfig:
    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        if not isinstance(pool, T().MemoryPoolType) or int(pool_size) < 0:
            raise TypeError("set_memory_pool_limit(): incompatible function arguments")
        self.__dict__.setdefault("_pools", {})[pool.name] = int(pool_size)

    def set_flag(self, flag: Any) -> None:
        if not isinstance(flag, T().BuilderFlag):
            raise TypeError(f"set_flag(): incompatible function arguments ({flag!r})")
        self.__dict__.setdefault("_flags", set()).add(flag.name)

    def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
        data = bytes(serialized_timing_cache)
        version = T().__trt_version__
        if data and not data.startswith(b"WMOE-TC\0" + version.encode() + b"\0"):
            return new(T().ITimingCache, _data=b"", _foreign=True)
        return new(T().ITimingCache, _data=data.split(b"\0", 2)[2] if data else b"", _foreign=False)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        if cache._foreign and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self) -> Any:
        return getattr(self, "_cache", None)

    def add_optimization_profile(self, profile: Any) -> int:
        if not bool(profile):
            return -1
        profiles = self.__dict__.setdefault("_profiles", [])
        profiles.append(profile)
        return len(profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.__dict__.get("_profiles", []))


class OnnxParser:
    def __init__(self, network: Any, logger: Any) -> None:
        self._network, self._logger, self._errors = network, logger, []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> Any:
        return self._errors[index] if 0 <= index < len(self._errors) else None

    def _fail(self, msg: str) -> bool:
        self._errors.append(new(T().ParserError, _desc=msg))
        _log(self._logger, "ERROR", msg)
        return False

    def parse_from_file(self, model: str) -> bool:
        import onnx
        try:
            proto = onnx.load(model)
        except Exception as e:  # noqa: BLE001 -- the parser reports, it does not raise
            return self._fail(f"ModelImporter.cpp: Failed to parse ONNX model from file: {model} ({e})")
        net = self._network
        init = {i.name for i in proto.graph.initializer}

        def shape(vi: Any) -> List[int]:
            return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]

        def dt(vi: Any) -> str:
            return _ONNX_DT[vi.type.tensor_type.elem_type]

        net._inputs = [_tensor(i.name, shape(i), dt(i)) for i in proto.graph.input if i.name not in init]
        net._outputs = [_tensor(o.name, shape(o), dt(o)) for o in proto.graph.output]
        net._onnx = proto.SerializeToString()
        net._plugins = []
        for node in proto.graph.node:
            if node.domain in ("", "ai.onnx", "com.microsoft"):
                continue
            err = self._import_plugin(node)
            if err:
                return self._fail(err)
        return True

    def _import_plugin(self, node: Any) -> Optional[str]:
        try:
            _, plugin = import_plugin_node(node, self._logger)
        except RuntimeError as e:
            return str(e)
        self._network._plugins.append((node, plugin))
        return None


def import_plugin_node(node: Any, logger: Any = None) -> Tuple[Any, Any]:
    """``(creator, plugin)`` for one custom ONNX node, as onnxOpImporters.cpp's fallback plugin importer makes it
    for an ``IPluginCreatorV3Quick``: the creator looked up by op type, ``plugin_version`` (default "1") and the
    ``plugin_namespace`` attribute (default ""), ignoring the ONNX domain; the node's attributes passed as fields
    typed like the creator's declared fields (an ONNX INT becomes a one-element integer array). RuntimeError
    "Plugin not found" when no creator matches."""
    import onnx
    core = T()
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    version = attrs.pop("plugin_version", b"1")
    namespace = attrs.pop("plugin_namespace", b"")
    version = version.decode() if isinstance(version, bytes) else str(version)
    namespace = namespace.decode() if isinstance(namespace, bytes) else str(namespace)
    creator = core.get_plugin_registry().get_creator(node.op_type, version, namespace)
    if creator is None:
        raise RuntimeError(f"onnxOpImporters.cpp: Plugin not found, are the plugin name, version, and namespace "
                           f"correct? ({node.op_type}, version {version}, namespace {namespace!r})")
    fields = []
    for declared in creator.field_names:
        if declared.name not in attrs:
            if logger is not None:
                _log(logger, "WARNING", f"Attribute {declared.name} not found in plugin node!")
            continue
        value = attrs[declared.name]
        if declared.type == core.PluginFieldType.CHAR:
            data = value if isinstance(value, bytes) else str(value).encode()
            fields.append(core.PluginField(declared.name, data, core.PluginFieldType.CHAR))
        else:
            fields.append(core.PluginField(declared.name, np.atleast_1d(np.asarray(value)), declared.type))
    # the quick-plugin bridge hands the creator its own name and namespace (the frontend keys its registry so)
    plugin = creator.create_plugin(creator.name, namespace,
                                   core.PluginFieldCollection_(core.PluginFieldCollection(fields)),
                                   core.TensorRTPhase.BUILD, core.QuickPluginCreationRequest.PREFER_AOT)
    if plugin is None:
        raise RuntimeError(f"{node.op_type}: the plugin creator returned None")
    return creator, plugin


class Builder:
    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def create_network(self, flags: int = 0) -> Any:
        return new(T().INetworkDefinition, _flags=int(flags), _inputs=[], _outputs=[], _plugins=[], _onnx=b"")

    def create_builder_config(self) -> Any:
        return new(T().IBuilderConfig, _cache=None)

    def create_optimization_profile(self) -> Any:
        return new(T().IOptimizationProfile)

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        profiles = config.__dict__.get("_profiles", [])
        for t in network._inputs:
            if any(d < 0 for d in t.shape):
                if not profiles:
                    _log(self._logger, "ERROR", f"Network has dynamic or shape inputs, but no optimization profile "
                                                f"has been defined ({t.name})")
                    return None
                for i, p in enumerate(profiles):
                    got = p.get_shape(t.name)
                    if not got:
                        _log(self._logger, "ERROR", f"optimization profile {i} has no shape for {t.name}")
                        return None
                    for d in got:
                        if len(d) != len(t.shape) or any(s >= 0 and s != g for s, g in zip(t.shape, d)):
                            _log(self._logger, "ERROR", f"profile {i}: {t.name} shape {d} does not match the "
                                                        f"network's {t.shape}")
                            return None
        kernels = []
        for node, plugin in network._plugins:
            opt = {t.name: list(profiles[0].get_shape(t.name)[1]) for t in network._inputs} if profiles else {}
            kernels.append(_build_plugin_layer(network, node, plugin, opt))
        header = {
            "tensorrt": T().__trt_version__,
            "inputs": [{"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape)} for t in network._inputs],
            "outputs": [{"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape)} for t in network._outputs],
            "profiles": [{t.name: [list(d) for d in p.get_shape(t.name)] for t in network._inputs} for p in profiles],
            "flags": sorted(config.__dict__.get("_flags", set())), "plugins": kernels,
        }
        h = json.dumps(header).encode()
        return _host_memory(MAGIC + struct.pack("<Q", len(h)) + h + network._onnx)


def _infer_shapes(network: Any, batch_shapes: Dict[str, List[int]]) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """Shapes of every tensor of the network's ONNX at the given input shapes (ONNX shape inference)."""
    import onnx
    proto = onnx.ModelProto()
    proto.ParseFromString(network._onnx)
    for i in proto.graph.input:
        if i.name in batch_shapes:
            for d, v in zip(i.type.tensor_type.shape.dim, batch_shapes[i.name]):
                d.Clear()
                d.dim_value = v
    # data propagation: shapes computed in the graph (the in-graph resize of a frames model to the image size) are
    # static at static input shapes, as TensorRT's own shape analysis finds them
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type in _ONNX_DT and all(d.HasField("dim_value") for d in tt.shape.dim):
            out[vi.name] = (tuple(d.dim_value for d in tt.shape.dim), _ONNX_DT[tt.elem_type])
    for t in proto.graph.initializer:
        out[t.name] = (tuple(t.dims), _ONNX_DT.get(t.data_type, "FLOAT"))
    return out


def _build_plugin_layer(network: Any, node: Any, plugin: Any, opt: Dict[str, List[int]]) -> Dict[str, Any]:
    """What the builder does with one plugin layer at the profile's opt shapes; the kernel goes into the engine."""
    known = _infer_shapes(network, opt)
    missing = [n for n in node.input if n not in known]
    if missing:
        raise RuntimeError(f"double: no static shape for plugin {node.name} inputs {missing} at the opt shape")
    ins = [(known[n][0], _dtype(known[n][1])) for n in node.input]
    got = drive_plugin(plugin, ins)
    return {"node": node.name, "op": node.op_type, "kernel": got["kernel"],
            "ptx_sha256": hashlib.sha256(got["ptx"].encode()).hexdigest(), "grid": list(got["grid"]),
            "block": got["block"], "out_shapes": [list(s) for s in got["out_shapes"]],
            "out_types": [t.name for t in got["out_types"]]}


def drive_plugin(plugin: Any, inputs: List[Tuple[Tuple[int, ...], Any]], dynamic_batch: bool = True
                 ) -> Dict[str, Any]:
    """Drive ``plugin`` through the calls TensorRT's builder makes for concrete input shapes: output types and
    shapes, format combinations, tactic, launch parameters and kernel. Values come back evaluated. Every TensorRT
    object handed to the plugin is built through the generated surface."""
    core = T()
    builder = core.IExprBuilder()
    types_ = [dt for _, dt in inputs]
    out_types = plugin.get_output_data_types(types_, [len(s) for s, _ in inputs])
    in_exprs = []
    for shape, _ in inputs:
        e = core.DimsExprs(len(shape))
        for j, d in enumerate(shape):
            e[j] = dim_expr(d, False) if (j == 0 and dynamic_batch) else builder.constant(d)
        in_exprs.append(e)
    out_exprs = plugin.get_output_shapes(in_exprs, [], builder)
    out_shapes = [tuple(e[i]._value for i in range(len(e))) for e in out_exprs]
    n_in = len(inputs)

    def desc(shape: Tuple[int, ...], dt: Any) -> Any:
        d = core.PluginTensorDesc()
        d.dims, d.type = core.Dims(list(shape)), dt
        return d

    descs = [desc(s, t) for s, t in inputs] + [desc(s, t) for s, t in zip(out_shapes, out_types)]
    dyn = []
    for d in descs:
        x = core.DynamicPluginTensorDesc()
        x.desc, x.min, x.opt, x.max = d, d.dims, d.dims, d.dims
        dyn.append(x)
    combos = plugin.get_supported_format_combinations(dyn, n_in)
    plugin.configure_plugin(dyn[:n_in], dyn[n_in:])
    tactics = plugin.get_valid_tactics()
    plugin.set_tactic(tactics[0] if tactics else 0)
    lp = new(core.KernelLaunchParams)  # made by TensorRT (no Python constructor)
    setter = new(core.ISymExprs)
    setter.nbSymExprs = 0
    plugin.get_launch_params(in_exprs, dyn, n_in, lp, setter, builder)
    name, ptx = plugin.get_kernel(descs[:n_in], descs[n_in:])

    def val(e: Any) -> Any:  # 10.x stores the IDimensionExpr, 11.x the ISymExpr wrapping it
        e = e.expr if hasattr(e, "expr") else e
        return e._value if isinstance(e, core.IDimensionExpr) else e

    def opt(name_: str) -> Any:
        try:
            return val(getattr(lp, name_))
        except NotImplementedError:  # never set by the plugin: TensorRT's default
            return 1 if name_ != "shared_mem" else 0

    return {"out_types": list(out_types), "out_shapes": out_shapes,
            "combos": [(c.type, c.format) for c in combos],
            "grid": (opt("grid_x"), opt("grid_y"), opt("grid_z")), "block": opt("block_x"),
            "block_yz": (opt("block_y"), opt("block_z")), "shared_mem": opt("shared_mem"),
            "n_extra": setter.nbSymExprs, "extra": [val(setter[i].expr) for i in range(setter.nbSymExprs)],
            "extra_dtypes": [setter[i].dtype for i in range(setter.nbSymExprs)],
            "kernel": name.decode() if isinstance(name, bytes) else name,
            "ptx": ptx.decode() if isinstance(ptx, bytes) else ptx}


class ParserError:
    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return self._desc

    def __repr__(self) -> str:
        return f"ParserError({self._desc!r})"


# -- runtime ------------------------------------------------------------------------------------------------------------
class Runtime:
    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        data = bytes(serialized_engine)
        if not data.startswith(MAGIC):
            _log(self._logger, "ERROR", "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Magic tag "
                                        "does not match)")
            return None
        (n,) = struct.unpack("<Q", data[len(MAGIC):len(MAGIC) + 8])
        header = json.loads(data[len(MAGIC) + 8:len(MAGIC) + 8 + n])
        if header["tensorrt"] != T().__trt_version__:
            _log(self._logger, "ERROR", f"Serialization assertion failed: the engine was built with TensorRT "
                                        f"{header['tensorrt']}, this is {T().__trt_version__}")
            return None
        return new(T().ICudaEngine, _header=header, _onnx=data[len(MAGIC) + 8 + n:], _session=None)


class ICudaEngine:
    def _io(self) -> List[Dict[str, Any]]:
        return self._header["inputs"] + self._header["outputs"]

    @property
    def num_io_tensors(self) -> int:
        return len(self._io())

    @property
    def num_optimization_profiles(self) -> int:
        return max(1, len(self._header["profiles"]))

    def get_tensor_name(self, index: int) -> str:
        return self._io()[index]["name"]

    def _t(self, name: str) -> Dict[str, Any]:
        for t in self._io():
            if t["name"] == name:
                return t
        raise RuntimeError(f"no tensor named {name}")

    def get_tensor_mode(self, name: str) -> Any:
        mode = "INPUT" if any(t["name"] == name for t in self._header["inputs"]) else "OUTPUT"
        return getattr(T().TensorIOMode, mode)

    def get_tensor_dtype(self, name: str) -> Any:
        return _dtype(self._t(name)["dtype"])

    def get_tensor_shape(self, name: str) -> Any:
        return dims(self._t(name)["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Any]:
        return [dims(d) for d in self._header["profiles"][profile_index][name]]

    def create_execution_context(self, *args: Any, **kwargs: Any) -> Any:
        return new(T().IExecutionContext, _engine=self, _profile=0, _shapes={}, _addresses={})


class IExecutionContext:
    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < self._engine.num_optimization_profiles:
            return False
        self._profile = profile_index
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        eng = self._engine
        if eng.get_tensor_mode(name) != T().TensorIOMode.INPUT:
            return False
        lo, _, hi = (list(d) for d in eng.get_tensor_profile_shape(name, self._profile))
        shape = [int(s) for s in shape]
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> Any:
        eng = self._engine
        if name in self._shapes:
            return dims(self._shapes[name])
        shape = list(eng._t(name)["shape"])
        batch = next(iter(self._shapes.values()), [-1])[0]
        return dims([batch if (i == 0 and d < 0) else d for i, d in enumerate(shape)])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._engine._t(name)
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        eng = self._engine
        names = [t["name"] for t in eng._io()]
        if set(self._addresses) != set(names) or len(self._shapes) != len(eng._header["inputs"]):
            return False
        cuda = sys.modules.get("cuda_double")
        cuda = cuda if cuda is not None and cuda.ACTIVE else None

        def run() -> None:
            feeds = {}
            for t in eng._header["inputs"]:
                shape, dt = self._shapes[t["name"]], np.dtype(_NP[t["dtype"]])
                nbytes = int(np.prod(shape)) * dt.itemsize
                _check_device(cuda, self._addresses[t["name"]], nbytes)
                buf = (ctypes.c_char * nbytes).from_address(self._addresses[t["name"]])
                feeds[t["name"]] = np.frombuffer(bytes(buf), dtype=dt).reshape(shape)
            outs = _run_onnx(eng, feeds)
            for t in eng._header["outputs"]:
                shape = list(self.get_tensor_shape(t["name"]))
                arr = np.ascontiguousarray(outs.get(t["name"], np.zeros(shape, _NP[t["dtype"]])), _NP[t["dtype"]])
                assert list(arr.shape) == shape, (t["name"], arr.shape, shape)
                _check_device(cuda, self._addresses[t["name"]], arr.nbytes)
                ctypes.memmove(self._addresses[t["name"]], arr.ctypes.data, arr.nbytes)

        if cuda is not None:
            cuda.enqueue(stream_handle, run)
        else:
            run()
        return True


def _check_device(cuda: Any, address: int, nbytes: int) -> None:
    if cuda is not None and not cuda.is_device(address, nbytes):
        raise RuntimeError(f"TensorRT double: address {address:#x} (+{nbytes} B) is not device memory")


def _run_onnx(eng: Any, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The portable flavor runs in ONNX Runtime; a plugin-flavor engine (custom nodes) returns no values."""
    if eng._header["plugins"]:
        return {}
    if eng._session is None:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        eng._session = ort.InferenceSession(eng._onnx, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in eng._session.get_outputs()]
    return dict(zip(names, eng._session.run(names, feeds)))


BEHAVIOURS: Dict[str, Any] = {
    "PluginField": PluginField, "PluginFieldCollection": PluginFieldCollection,
    "PluginFieldCollection_": PluginFieldCollection_, "IDimensionExpr": IDimensionExpr,
    "IExprBuilder": IExprBuilder, "DimsExprs": DimsExprs, "Dims": Dims, "PluginTensorDesc": PluginTensorDesc,
    "DynamicPluginTensorDesc": DynamicPluginTensorDesc, "ISymExprs": ISymExprs, "ILogger": ILogger,
    "Logger": Logger, "IPluginRegistry": IPluginRegistry, "ITensor": ITensor,
    "INetworkDefinition": INetworkDefinition, "IOptimizationProfile": IOptimizationProfile,
    "IHostMemory": IHostMemory, "ITimingCache": ITimingCache, "IBuilderConfig": IBuilderConfig,
    "OnnxParser": OnnxParser, "Builder": Builder, "ParserError": ParserError, "Runtime": Runtime,
    "ICudaEngine": ICudaEngine, "IExecutionContext": IExecutionContext, "<module>": _Module,
}
