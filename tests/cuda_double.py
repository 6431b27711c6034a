"""A CUDA runtime double whose surface is cuda-python's real one (``cuda.bindings.runtime``, installed here), for
running :mod:`wmoe.runtime.cuda_api` and the TensorRT backend without a GPU.

Generated at test time: every public function of the installed ``cuda.bindings.runtime`` becomes a function of the
double with that function's own :func:`inspect.signature` (the Cython bindings expose it); a call that does not bind
raises ``TypeError``, a name the module lacks ``AttributeError``, a real function without behaviour here
``NotImplementedError``. Types are the REAL ones (``cudaError_t``, ``cudaMemcpyKind``, ``cudaStreamCaptureMode``,
``cudaStream_t``, ``cudaGraph_t``, ``cudaGraphExec_t``, ``cudaDeviceProp``), and ``cudaGetErrorString`` is the real
function (a table lookup that needs no device). Return values follow cuda-python: a tuple ``(cudaError_t, value...)``.

Behaviour: one device (``DEVICE_NAME``, compute capability ``CC``, driver ``DRIVER``); device and pinned memory are
host allocations kept apart (a copy whose direction does not match where its pointers live fails with
``cudaErrorInvalidValue``, as does freeing what was not allocated); streams run work at once, except while a
stream captures: then copies and enqueued work (:func:`enqueue`, what the TensorRT double's ``execute_async_v3``
uses) are recorded into the graph, and ``cudaGraphLaunch`` replays them.
"""
from __future__ import annotations

import ctypes
import inspect
import sys
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

from cuda.bindings import runtime as real

DEVICE_NAME = "NVIDIA H100 80GB HBM3"
CC = (9, 0)
DRIVER = 12060  # CUDA 12.6
TOTAL = 80 << 30

OK = real.cudaError_t.cudaSuccess
INVALID = real.cudaError_t.cudaErrorInvalidValue
KIND = real.cudaMemcpyKind


class _State:
    def __init__(self) -> None:
        self.device: Dict[int, Any] = {}  # address -> ctypes buffer
        self.pinned: Dict[int, Any] = {}
        self.streams: Dict[int, Optional[List[Callable[[], None]]]] = {}  # handle -> recording list while capturing
        self.graphs: Dict[int, List[Callable[[], None]]] = {}
        self.execs: Dict[int, List[Callable[[], None]]] = {}
        self.next_handle = 0x1000
        self.current: Optional[int] = None

    def handle(self) -> int:
        self.next_handle += 16
        return self.next_handle


STATE = _State()
ACTIVE = False  # set while installed: the TensorRT double then enqueues on these streams and checks addresses


def reset() -> None:
    global STATE
    STATE = _State()


def _alloc(table: Dict[int, Any], size: int) -> int:
    buf = ctypes.create_string_buffer(max(int(size), 1))
    addr = ctypes.addressof(buf)
    table[addr] = buf
    return addr


def _within(table: Dict[int, Any], addr: int, nbytes: int) -> bool:
    for start, buf in table.items():
        if start <= addr and addr + nbytes <= start + ctypes.sizeof(buf):
            return True
    return False


def is_device(addr: int, nbytes: int) -> bool:
    """Whether ``[addr, addr + nbytes)`` lies in one device allocation."""
    return _within(STATE.device, int(addr), int(nbytes))


def enqueue(stream: Any, work: Callable[[], None]) -> None:
    """Run ``work`` on ``stream``: now, or recorded into the graph while the stream captures."""
    rec = STATE.streams.get(int(stream))
    if rec is not None:
        rec.append(work)
    else:
        work()


class _Behaviour:
    @staticmethod
    def cudaSetDevice(device: Any) -> Tuple[Any]:
        if int(device) != 0:
            return (real.cudaError_t.cudaErrorInvalidDevice,)
        STATE.current = 0
        return (OK,)

    @staticmethod
    def cudaGetDeviceProperties(device: Any) -> Tuple[Any, Any]:
        if int(device) != 0:
            return (real.cudaError_t.cudaErrorInvalidDevice, None)
        p = real.cudaDeviceProp()
        p.name = DEVICE_NAME.encode().ljust(256, b"\0")
        p.major, p.minor = CC
        p.totalGlobalMem = TOTAL
        return (OK, p)

    @staticmethod
    def cudaDriverGetVersion() -> Tuple[Any, int]:
        return (OK, DRIVER)

    @staticmethod
    def cudaStreamCreate() -> Tuple[Any, Any]:
        h = STATE.handle()
        STATE.streams[h] = None
        return (OK, real.cudaStream_t(init_value=h))

    @staticmethod
    def cudaStreamSynchronize(stream: Any) -> Tuple[Any]:
        h = int(stream)
        if h not in STATE.streams or STATE.streams[h] is not None:  # unknown, or capturing
            return (INVALID,)
        return (OK,)

    @staticmethod
    def cudaStreamDestroy(stream: Any) -> Tuple[Any]:
        return (OK,) if STATE.streams.pop(int(stream), "gone") != "gone" else (INVALID,)

    @staticmethod
    def cudaMalloc(size: Any) -> Tuple[Any, int]:
        return (OK, _alloc(STATE.device, size))

    @staticmethod
    def cudaFree(devPtr: Any) -> Tuple[Any]:
        return (OK,) if STATE.device.pop(int(devPtr), None) is not None else (INVALID,)

    @staticmethod
    def cudaMallocHost(size: Any) -> Tuple[Any, int]:
        return (OK, _alloc(STATE.pinned, size))

    @staticmethod
    def cudaFreeHost(ptr: Any) -> Tuple[Any]:
        return (OK,) if STATE.pinned.pop(int(ptr), None) is not None else (INVALID,)

    @staticmethod
    def cudaMemcpyAsync(dst: Any, src: Any, count: Any, kind: Any, stream: Any) -> Tuple[Any]:
        dst, src, n = int(dst), int(src), int(count)
        if not isinstance(kind, KIND) or int(stream) not in STATE.streams:
            return (INVALID,)
        ok = {KIND.cudaMemcpyHostToDevice: (is_device(dst, n), _within(STATE.pinned, src, n)),
              KIND.cudaMemcpyDeviceToHost: (_within(STATE.pinned, dst, n), is_device(src, n))}.get(kind)
        if ok is None or not all(ok):  # (pageable host memory would work in CUDA too; the backend pins all)
            return (INVALID,)
        enqueue(stream, lambda: ctypes.memmove(dst, src, n))
        return (OK,)

    @staticmethod
    def cudaMemGetInfo() -> Tuple[Any, int, int]:
        used = sum(ctypes.sizeof(b) for b in STATE.device.values())
        return (OK, TOTAL - used, TOTAL)

    @staticmethod
    def cudaStreamBeginCapture(stream: Any, mode: Any) -> Tuple[Any]:
        h = int(stream)
        if h not in STATE.streams or STATE.streams[h] is not None or not isinstance(mode, real.cudaStreamCaptureMode):
            return (INVALID,)
        STATE.streams[h] = []
        return (OK,)

    @staticmethod
    def cudaStreamEndCapture(stream: Any) -> Tuple[Any, Any]:
        h = int(stream)
        rec = STATE.streams.get(h)
        if rec is None:
            return (real.cudaError_t.cudaErrorIllegalState, None)
        STATE.streams[h] = None
        g = STATE.handle()
        STATE.graphs[g] = rec
        return (OK, real.cudaGraph_t(init_value=g))

    @staticmethod
    def cudaGraphInstantiate(graph: Any, flags: Any) -> Tuple[Any, Any]:
        work = STATE.graphs.get(int(graph))
        if work is None:
            return (INVALID, None)
        e = STATE.handle()
        STATE.execs[e] = list(work)
        return (OK, real.cudaGraphExec_t(init_value=e))

    @staticmethod
    def cudaGraphLaunch(graphExec: Any, stream: Any) -> Tuple[Any]:
        work = STATE.execs.get(int(graphExec))
        if work is None or int(stream) not in STATE.streams:
            return (INVALID,)
        for w in work:
            enqueue(stream, w)
        return (OK,)

    @staticmethod
    def cudaGraphExecDestroy(graphExec: Any) -> Tuple[Any]:
        return (OK,) if STATE.execs.pop(int(graphExec), None) is not None else (INVALID,)

    @staticmethod
    def cudaGraphDestroy(graph: Any) -> Tuple[Any]:
        return (OK,) if STATE.graphs.pop(int(graph), None) is not None else (INVALID,)


#: real functions used as they are (no device needed)
REAL_FUNCTIONS = ("cudaGetErrorString", "cudaGetErrorName")


def generate() -> types.ModuleType:
    """The double of ``cuda.bindings.runtime``: the real module's names and signatures, the behaviour above."""
    mod = types.ModuleType("cuda.bindings.runtime")
    for name in dir(real):
        if name.startswith("_"):
            continue
        obj = getattr(real, name)
        if isinstance(obj, type) or not callable(obj):
            setattr(mod, name, obj)  # the real types, enums and constants
            continue
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        if name in REAL_FUNCTIONS:
            setattr(mod, name, obj)
            continue
        impl = getattr(_Behaviour, name, None)
        setattr(mod, name, _bound(name, sig, impl))
    extra = [n for n in vars(_Behaviour) if not n.startswith("_") and not hasattr(real, n)]
    if extra:
        raise AttributeError(f"cuda_double behaviour for functions cuda.bindings.runtime does not have: {extra}")
    return mod


def _bound(name: str, sig: inspect.Signature, impl: Optional[Callable[..., Any]]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{name}{sig}: {e}") from None
        if impl is None:
            raise NotImplementedError(f"cuda.bindings.runtime.{name} exists but the CUDA double does not simulate it")
        return impl(*args, **kwargs)

    call.__name__ = name
    call.__signature__ = sig  # type: ignore[attr-defined]
    return call


def install(monkeypatch: Any) -> types.ModuleType:
    """Make ``from cuda.bindings import runtime`` give the double (undone with ``monkeypatch``)."""
    import cuda.bindings
    reset()
    mod = generate()
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", mod)
    monkeypatch.setattr(cuda.bindings, "runtime", mod)
    monkeypatch.setattr(sys.modules[__name__], "ACTIVE", True)
    return mod


def write_stub(dst: Any) -> List[str]:
    """Write ``cuda/bindings/runtime.pyi`` under ``dst`` from the installed module's introspected surface, for the
    type check of :mod:`wmoe.runtime.cuda_api` (cuda-python ships no stubs): every function with its real parameter
    names (annotated with the real class where the binding names one, else ``Any``) returning cuda-python's tuple,
    every enum with its members, every other type with its instance attributes. Returns the functions written."""
    from pathlib import Path
    root = Path(dst) / "cuda" / "bindings"
    root.mkdir(parents=True, exist_ok=True)
    (root.parent / "__init__.pyi").write_text("")
    (root / "__init__.pyi").write_text("from . import runtime as runtime\n")
    out = ["from typing import Any", ""]
    classes = {n for n in dir(real) if not n.startswith("_") and isinstance(getattr(real, n), type)}
    for n in sorted(classes):
        cls = getattr(real, n)
        if n in ("Any", "Optional"):
            continue
        members = getattr(cls, "__members__", None)
        if isinstance(members, dict) or (members is not None and hasattr(members, "keys")):
            out.append(f"class {n}(int):")
            out += [f"    {m}: {n}" for m in members] or ["    ..."]
            out.append("")
            continue
        out.append(f"class {n}:")
        out.append("    def __init__(self, *args: Any, **kwargs: Any) -> None: ...")
        out.append("    def __int__(self) -> int: ...")
        try:
            attrs = [a for a in dir(cls()) if not a.startswith("_")]
        except Exception:  # noqa: BLE001 -- a type that cannot be made without arguments: attributes unknown
            attrs = []
        if attrs:
            out += [f"    {a}: Any" for a in attrs if a.isidentifier()]
        else:
            out.append("    def __getattr__(self, name: str) -> Any: ...")
        out.append("")
    funcs = []
    for n in sorted(dir(real)):
        obj = getattr(real, n)
        if n.startswith("_") or isinstance(obj, type) or not callable(obj):
            continue
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        params = []
        for p in sig.parameters.values():
            ann = p.annotation if isinstance(p.annotation, str) and p.annotation in classes else "Any"
            default = " = ..." if p.default is not inspect.Parameter.empty else ""
            prefix = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(p.kind, "")
            params.append(f"{prefix}{p.name}: {ann}{default}")
        ret = "tuple[Any, ...]" if n.startswith("cuda") else "Any"
        out.append(f"def {n}({', '.join(params)}) -> {ret}: ...")
        funcs.append(n)
    (root / "runtime.pyi").write_text("\n".join(out) + "\n")
    return funcs
