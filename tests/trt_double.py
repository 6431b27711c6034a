"""A TensorRT test double whose SURFACE is generated, at test time, from TensorRT's published API -- never written
by hand -- so that a name or an argument TensorRT does not have fails the test.

Where the surface comes from (nothing generated is committed; everything is rebuilt from the installed files):

* ``tensorrt-stubs`` 10.13.0.35.1 (``make install`` puts it under ``.venv/trt-stubs/10.13``, ``--no-deps``: the
  wheel requires the ``tensorrt`` placeholder that downloads from pypi.nvidia.com, and installed into site-packages
  its ``tensorrt/__init__.pyi`` would turn ``import tensorrt`` into an empty namespace package). Its
  ``tensorrt_bindings/tensorrt.pyi`` is parsed with :mod:`ast`: classes (nested ones too) and their bases, methods
  with every overload's parameters (an :class:`inspect.Signature` each), properties (and whether they have a
  setter), annotated attributes, enum members, module functions and constants.
* each bindings wheel's compiled ``tensorrt.so`` (10.9 and 11.4 under ``.venv/trt-frontends``, 10.16 in
  site-packages): a stub class, member or enum value exists in TensorRT ``V`` only if its name is a NUL-terminated
  string of that version's ``.so`` (pybind11 keeps every bound name as a C string; the linker may share a string's
  tail with a longer one, so the test is "some string of the .so ends with the name"). That is how TensorRT 11
  loses ``BuilderFlag.FP16``/``INT8``, ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` and every calibrator.
  Names newer than 10.13 (in an 11.x ``.so`` but not in the stub) are absent from the double: the double is the
  intersection, never wider than either source.

Only the compiled core (``tensorrt.tensorrt``) is doubled: the wheel's own ``tensorrt/__init__.py`` (``nptype``,
``volume``, ``Logger.Severity``, ``DataType.itemsize``, ``__version__``) and ``tensorrt/plugin`` run for real on
top of it (:func:`load`).

Rules the generated classes enforce:

* an attribute outside the generated surface -> ``AttributeError`` (reading or setting it; Python subclasses that
  TensorRT's own ``tensorrt.plugin`` frontend derives from the core classes keep their own attributes);
* a call whose arguments bind to none of the stub's overloads -> ``TypeError`` (``inspect.Signature.bind``);
* a surface method with no behaviour -> ``NotImplementedError`` naming it (TensorRT has it, the double does not
  simulate it: a test that needs it must add the behaviour, which is checked against the surface too).

Behaviour (what the tests need: shapes, a plugin registry, a serialized engine, an execution context) lives in
:mod:`trt_behaviour` as plain classes named like the TensorRT classes; :func:`generate` refuses a behaviour member
that is not in the surface of the version being generated. One deliberate mapping: the stub's ``__buffer__`` (a
buffer-protocol object, ``IHostMemory``) is implemented as ``__bytes__``, because a Python 3.11 class cannot export
a buffer; ``bytes(blob)`` behaves the same.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import keyword
import re
import sys
import types
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

STUB_VERSION = "10.13.0.35.1"


# -- where the published API lives ------------------------------------------------------------------------------------
def _venv_roots() -> List[Path]:
    """This venv, and the venvs whose site-packages it sees through a .pth (a worktree's .venv sees the main one)."""
    roots = [Path(sys.prefix)]
    for p in sys.path:
        if p.endswith("site-packages") and Path(p).is_dir():
            root = Path(p).parents[2]
            if root not in roots:
                roots.append(root)
    return roots


def stub_dir() -> Path:
    """The folder holding ``tensorrt_bindings/tensorrt.pyi`` of tensorrt-stubs 10.13 (``make install``)."""
    for root in _venv_roots():
        d = root / "trt-stubs" / "10.13"
        if (d / "tensorrt_bindings" / "tensorrt.pyi").is_file():
            return d
    raise FileNotFoundError("tensorrt-stubs 10.13 not found under .venv/trt-stubs/10.13: run make install (it runs "
                            "pip install --no-deps --target .venv/trt-stubs/10.13 tensorrt-stubs==10.13.0.35.1)")


def bindings_dirs() -> Dict[str, Path]:
    """``{version: tensorrt_bindings folder}`` of every bindings wheel installed (dev extra + .venv/trt-frontends)."""
    found = []
    spec = importlib.util.find_spec("tensorrt_bindings")  # locates without importing (the core would not load)
    if spec is not None and spec.submodule_search_locations:
        found.append(Path(list(spec.submodule_search_locations)[0]))
    for root in _venv_roots():
        if (root / "trt-frontends").is_dir():
            found += sorted((root / "trt-frontends").glob("*/tensorrt_bindings"))
    out: Dict[str, Path] = {}
    for d in found:
        m = re.search(r'^__version__\s*=\s*"([^"]+)"', (d / "__init__.py").read_text(), re.M)
        if m and (d / "tensorrt.so").is_file() and m.group(1) not in out:
            out[m.group(1)] = d
    return out


def version_dir(prefix: str) -> Path:
    """The bindings folder of the installed version starting with ``prefix`` (``"10.9"``, ``"11.4"``)."""
    dirs = bindings_dirs()
    for v, d in dirs.items():
        if v == prefix or v.startswith(prefix + "."):
            return d
    raise FileNotFoundError(f"tensorrt-cu12-bindings {prefix} not installed (have {sorted(dirs)}): make install")


class SoNames:
    """The names a compiled ``tensorrt.so`` carries: every identifier that ends one of its NUL-terminated strings
    (the linker stores ``"INT8"`` inside ``"UINT8"``, a name may even share a docstring's last word). This can only
    make a name look present that is not, never the reverse: the stub bounds the surface from the other side."""

    def __init__(self, so: Path) -> None:
        self.path = so
        self.data = so.read_bytes()
        tail = re.compile(rb"[A-Za-z0-9_]{1,96}$")
        names = set()
        for tok in self.data.split(b"\0"):
            m = tail.search(tok)  # a shared tail may follow any text, a docstring's last word included
            if m:
                run = m.group().decode()
                names.update(run[i:] for i in range(len(run)) if not run[i].isdigit())
        self.names = frozenset(names)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def has_text(self, text: str) -> bool:
        """A docstring (or a line of one) is in the .so; a trailing period does not count (10.9 has none)."""
        return text.rstrip(".").encode() in self.data


@lru_cache(maxsize=None)
def so_names(bindings: Path) -> SoNames:
    return SoNames(bindings / "tensorrt.so")


# -- the stub, parsed ---------------------------------------------------------------------------------------------------
class StubDefault:
    """A default value the stub shows only as text (``...``, an enum member): what binding needs is that it exists."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


@dataclass
class Method:
    name: str
    sigs: List[inspect.Signature]
    static: bool = False


@dataclass
class Prop:
    name: str
    settable: bool


@dataclass
class ClassSpec:
    name: str
    bases: List[str]
    methods: Dict[str, Method] = field(default_factory=dict)
    props: Dict[str, Prop] = field(default_factory=dict)
    enum: Dict[str, int] = field(default_factory=dict)  # member -> value (10.13's numbering; compare by name)
    enum_docs: Dict[str, str] = field(default_factory=dict)  # member -> its line in the class docstring
    consts: Dict[str, Any] = field(default_factory=dict)
    nested: Dict[str, "ClassSpec"] = field(default_factory=dict)
    is_enum: bool = False


@dataclass
class StubSpec:
    classes: Dict[str, ClassSpec]
    functions: Dict[str, Method]
    constants: Dict[str, Tuple[str, str]]  # name -> (enum class, member): ``float16 = DataType.HALF``


def _signature(fn: ast.FunctionDef, static: bool) -> inspect.Signature:
    a = fn.args
    params: List[inspect.Parameter] = []
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)

    def default(node: Optional[ast.expr]) -> Any:
        if node is None:
            return inspect.Parameter.empty
        try:
            return ast.literal_eval(node)
        except ValueError:
            return StubDefault(ast.unparse(node))

    for i, (arg, d) in enumerate(zip(positional, defaults)):
        kind = (inspect.Parameter.POSITIONAL_ONLY if arg in a.posonlyargs
                else inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params.append(inspect.Parameter(arg.arg, kind, default=default(d)))
    if a.vararg:
        params.append(inspect.Parameter(a.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        params.append(inspect.Parameter(arg.arg, inspect.Parameter.KEYWORD_ONLY, default=default(d)))
    if a.kwarg:
        params.append(inspect.Parameter(a.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    # pybind11 accepts a required parameter after defaulted ones (add_scale_nd): keep the stub's order as is
    return inspect.Signature(params, __validate_parameters__=False)


def _decorators(fn: ast.FunctionDef) -> List[str]:
    return [ast.unparse(d) for d in fn.decorator_list]


_VALUE = re.compile(r"#\s*value\s*=\s*<(?:\w+\.)*(\w+):\s*(-?\d+)>")


def _class(node: ast.ClassDef, lines: List[str]) -> ClassSpec:
    spec = ClassSpec(node.name, [ast.unparse(b).split(".")[-1] for b in node.bases])
    doc = ast.get_docstring(node, clean=False) or ""
    if "Members:" in doc:
        spec.enum_docs = {m.group(1): m.group(2).strip()
                          for m in re.finditer(r"^\s+(\w+) : (.+)$", doc.split("Members:", 1)[1], re.M)}
    for item in node.body:
        if isinstance(item, ast.ClassDef):
            spec.nested[item.name] = _class(item, lines)
        elif isinstance(item, ast.FunctionDef):
            decos = _decorators(item)
            if "property" in decos:
                spec.props[item.name] = Prop(item.name, spec.props.get(item.name, Prop(item.name, False)).settable)
            elif any(d.endswith(".setter") for d in decos):
                spec.props[item.name] = Prop(item.name, True)
            else:
                static = "staticmethod" in decos
                sig = _signature(item, static)
                m = spec.methods.setdefault(item.name, Method(item.name, [], static))
                m.sigs.append(sig)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            name, ann = item.target.id, ast.unparse(item.annotation)
            if name == "__members__":
                spec.is_enum = True
            elif ann.startswith("typing.ClassVar"):
                m = _VALUE.search(lines[item.lineno - 1])
                if m:  # an enum member: NAME: typing.ClassVar[Cls]  # value = <Cls.NAME: 3>
                    spec.enum[name] = int(m.group(2))
                elif item.value is not None:
                    try:
                        spec.consts[name] = ast.literal_eval(item.value)
                    except ValueError:
                        pass
            else:
                spec.props[name] = Prop(name, True)  # a plain read/write attribute (pybind11 def_readwrite)
    return spec


def repair_stub(text: str) -> Tuple[str, List[int]]:
    """tensorrt-stubs 10.13.0.35.1 is not valid Python: ``add_scale_nd`` declares ``channel_axis: int`` after
    defaulted parameters (pybind11 allows that, a ``def`` does not), and ``get_workspace_size`` has a parameter
    named ``in``. Such a parameter gets the default ``...`` (the stub's own spelling of "some default"), a keyword
    name a trailing ``_`` (it can only be passed by position anyway); returns the text and the repaired lines."""
    lines, fixed = text.splitlines(keepends=True), []
    while True:
        try:
            ast.parse("".join(lines))
            return "".join(lines), fixed
        except SyntaxError as e:
            i = (e.lineno or 0) - 1
            if i < 0 or not lines[i].lstrip().startswith("def ") or i + 1 in fixed:
                raise
            head, _, rest = lines[i].partition("(")
            params, close, tail = rest.rpartition(")")
            out, seen_default = [], False
            for part in params.split(", "):
                name = part.split(":")[0].split("=")[0].strip()
                if keyword.iskeyword(name):  # ``in``: only passable by position, as in pybind11
                    part = part.replace(name, name + "_", 1)
                seen_default = seen_default or "=" in part
                out.append(part + " = ..." if seen_default and "=" not in part and part != "self" else part)
            lines[i] = head + "(" + ", ".join(out) + close + tail
            fixed.append(i + 1)


@lru_cache(maxsize=None)
def parse_stub(pyi: Path) -> StubSpec:
    text, _ = repair_stub(pyi.read_text())
    lines = text.splitlines()
    tree = ast.parse(text)
    classes, functions, constants = {}, {}, {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = _class(node, lines)
        elif isinstance(node, ast.FunctionDef):
            functions[node.name] = Method(node.name, [_signature(node, True)], True)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            m = re.search(r"#\s*value\s*=\s*<(\w+)\.(\w+):", lines[node.lineno - 1])
            if m:
                constants[node.target.id] = (ast.unparse(node.annotation), m.group(2))
    return StubSpec(classes, functions, constants)


def stub_spec() -> StubSpec:
    return parse_stub(stub_dir() / "tensorrt_bindings" / "tensorrt.pyi")


@lru_cache(maxsize=None)
def _shared(stub: int) -> frozenset:
    spec = _STUBS[stub]
    seen: Dict[str, int] = {}

    def walk(c: ClassSpec) -> None:
        if c.is_enum:
            for m in c.enum:
                seen[m] = seen.get(m, 0) + 1
        for n in c.nested.values():
            walk(n)

    for c in spec.classes.values():
        walk(c)
    return frozenset(m for m, k in seen.items() if k > 1)


_STUBS: Dict[int, StubSpec] = {}


def shared_member_names(stub: StubSpec) -> frozenset:
    """Enum member names that more than one enum of the stub uses."""
    _STUBS[id(stub)] = stub
    return _shared(id(stub))


# -- generation -------------------------------------------------------------------------------------------------------
class SurfaceError(AttributeError):
    """A name outside TensorRT's generated surface."""


class _Core:
    """Root of every generated class: attribute reads/writes outside the surface fail like pybind11's."""
    _trt_version = "?"
    _surface: frozenset = frozenset()

    def __getattr__(self, name: str) -> Any:  # only called when normal lookup failed
        if name.startswith("_") and not name.startswith("__"):
            raise AttributeError(name)  # the behaviour's private state, not yet set
        raise SurfaceError(f"'tensorrt.{type(self).__qualname__}' object has no attribute '{name}' (TensorRT "
                           f"{self._trt_version}, surface generated from tensorrt-stubs {STUB_VERSION} and its "
                           "tensorrt.so)")

    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        if getattr(cls, "_generated", None) is cls and not name.startswith("_") and name not in cls._surface:
            raise SurfaceError(f"'tensorrt.{cls.__qualname__}' object has no attribute '{name}' to set (TensorRT "
                               f"{self._trt_version})")
        object.__setattr__(self, name, value)


class _EnumBase(_Core):
    """Behaviour shared by every generated enum (pybind11 enums: by-name members, int conversion)."""

    def __init__(self, value: int) -> None:
        for name, member in type(self).__members__.items():
            if int(member) == int(value):
                object.__setattr__(self, "_name", name)
                object.__setattr__(self, "_value", int(value))
                return
        raise ValueError(f"{type(self).__qualname__} has no value {value}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def value(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, _EnumBase):
            return type(self).__qualname__ == type(other).__qualname__ and self._value == other._value
        if isinstance(other, int):
            return self._value == other
        return NotImplemented

    def __ne__(self, other: Any) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __lt__(self, other: Any) -> bool:
        return self._value < int(other)

    def __le__(self, other: Any) -> bool:
        return self._value <= int(other)

    def __gt__(self, other: Any) -> bool:
        return self._value > int(other)

    def __ge__(self, other: Any) -> bool:
        return self._value >= int(other)

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__.split('.')[-1]}.{self._name}: {self._value}>"

    def __str__(self) -> str:
        return f"{type(self).__qualname__.split('.')[-1]}.{self._name}"

    def __getstate__(self) -> int:
        return self._value

    def __setstate__(self, state: int) -> None:
        _EnumBase.__init__(self, state)


def _checked(qualname: str, method: Method, impl: Callable[..., Any], version: str) -> Callable[..., Any]:
    """``impl`` behind the stub's signatures: arguments that bind to no overload raise TypeError, like pybind11."""
    sigs = method.sigs

    def call(*args: Any, **kwargs: Any) -> Any:
        errors = []
        for s in sigs:
            try:
                s.bind(*args, **kwargs)
                break
            except TypeError as e:
                errors.append(f"{s}: {e}")
        else:
            shown = [repr(a) for a in (args if method.static else args[1:])] + [f"{k}={v!r}" for k, v in kwargs.items()]
            raise TypeError(f"{qualname}(): incompatible function arguments ({', '.join(shown)}) for TensorRT "
                            f"{version}'s overloads: " + "; ".join(errors))
        return impl(*args, **kwargs)

    call.__name__ = method.name
    call.__qualname__ = qualname
    call.__signature__ = sigs[0]  # type: ignore[attr-defined]
    return staticmethod(call) if method.static else call  # type: ignore[return-value]


def _unsimulated(qualname: str, version: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"tensorrt.{qualname} exists in TensorRT {version} but the test double does not "
                                  "simulate it: add its behaviour in tests/trt_behaviour.py")
    return call


# dunders the stub lists that Python already gives every object, and those the wheel's __init__.py sets itself
_PYTHON_DEFAULT = {"__repr__", "__str__", "__eq__", "__ne__", "__hash__", "__getstate__", "__setstate__",
                   "__enter__", "__exit__", "__del__", "__buffer__", "__release_buffer__"}


def _no_constructor(qual: str) -> Callable[..., None]:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"tensorrt.{qual}: No constructor defined! (TensorRT makes these objects itself)")
    return init


_ENUM_DUNDERS = {"__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__", "__int__", "__index__",
                 "__repr__", "__str__", "__getstate__", "__setstate__", "__init__"}


def _make_class(spec: ClassSpec, qual: str, bases: Tuple[type, ...], names: SoNames, version: str,
                behaviour: Optional[type]) -> type:
    beh: Dict[str, Any] = {}
    for k in reversed(behaviour.__mro__[:-1]) if behaviour is not None else ():  # a behaviour may subclass another
        beh.update(vars(k))
    surface_methods = {n: m for n, m in spec.methods.items() if n.startswith("__") or n in names}
    surface_props = {n: p for n, p in spec.props.items() if n in names}
    if spec.is_enum:
        surface_props.update({n: Prop(n, False) for n in ("name", "value")})
    surface = set(surface_methods) | set(surface_props) | set(spec.consts)
    if "__buffer__" in surface_methods:
        surface.add("__bytes__")
    for base in bases:
        surface |= getattr(base, "_surface", frozenset())
    # a behaviour may only fill in the surface (its private helpers start with one underscore)
    for n in beh:
        if n.startswith("__") and n.endswith("__"):
            if n in ("__module__", "__dict__", "__weakref__", "__doc__", "__qualname__", "__annotations__"):
                continue
        elif n.startswith("_"):
            continue
        if n not in surface and not (n == "__bytes__" and "__buffer__" in surface):
            raise SurfaceError(f"behaviour {behaviour.__qualname__}.{n} is not part of TensorRT {version}'s "
                               f"{qual} (tensorrt-stubs {STUB_VERSION} + tensorrt.so)")
    ns: Dict[str, Any] = {"__module__": "tensorrt", "__qualname__": qual, "_trt_version": version}
    for n, v in beh.items():  # private helpers and state of the behaviour
        if n.startswith("_") and not (n.startswith("__") and n.endswith("__")):
            ns[n] = v
    for n, m in surface_methods.items():
        if spec.is_enum and n in _ENUM_DUNDERS:
            continue  # _EnumBase implements them (every one is in each enum's stub)
        if n in beh:
            impl = beh[n]
            impl = impl.__func__ if isinstance(impl, staticmethod) else impl
            ns[n] = _checked(f"{qual}.{n}", m, impl, version)
        elif n == "__init__":
            ns[n] = _checked(f"{qual}.{n}", m, lambda self, *a, **k: None, version)
        elif n in _PYTHON_DEFAULT:
            continue  # object's default (identity equality, repr) is harmless where no behaviour is given
        else:
            ns[n] = _unsimulated(f"{qual}.{n}", version)
    if "__init__" not in surface_methods and not any("__init__" in vars(b) for b in bases if b is not _Core):
        ns["__init__"] = _no_constructor(qual)
    if "__bytes__" in beh and "__buffer__" in surface_methods:
        ns["__bytes__"] = beh["__bytes__"]
    for n, p in surface_props.items():
        if spec.is_enum and n in ("name", "value"):
            continue
        given = beh.get(n)
        if isinstance(given, property):
            fset = given.fset if p.settable else None
            if p.settable and fset is None:
                fset = _store_setter(n)
            ns[n] = property(given.fget, fset)
        elif given is not None:
            raise SurfaceError(f"behaviour {qual}.{n} must be a property (it is one in TensorRT)")
        else:
            ns[n] = property(_stored_getter(qual, n, version), _store_setter(n) if p.settable else None)
    ns.update(spec.consts)
    ns["_surface"] = frozenset(surface)
    cls = type(spec.name, bases, ns)
    cls._generated = cls  # type: ignore[attr-defined]
    return cls


def _stored_getter(qual: str, name: str, version: str) -> Callable[[Any], Any]:
    def get(self: Any) -> Any:
        props = self.__dict__.get("_props", {})
        if name in props:
            return props[name]
        raise NotImplementedError(f"tensorrt.{qual}.{name} exists in TensorRT {version} but the test double has no "
                                  "value for it (set it first, or add its behaviour in tests/trt_behaviour.py)")
    return get


def _store_setter(name: str) -> Callable[[Any, Any], None]:
    def put(self: Any, value: Any) -> None:
        self.__dict__.setdefault("_props", {})[name] = value
    return put


def enum_member_present(spec: ClassSpec, member: str, names: SoNames, shared: frozenset) -> bool:
    """Whether TensorRT (``names``: its .so) binds ``spec.member``. The name must be in the .so; a name that
    several enums of the stub share (``INT8``: DataType, BuilderFlag, PluginFieldType...) is only evidence for one of
    them, so then the member's own docstring line from the stub must be in the .so too (``BuilderFlag.INT8`` is
    "Enable Int8 layer selection.", which TensorRT 11's .so no longer carries)."""
    if member not in names:
        return False
    doc = spec.enum_docs.get(member)
    return member not in shared or not doc or names.has_text(doc)


def _enum_class(spec: ClassSpec, qual: str, names: SoNames, version: str) -> type:
    cls = _make_class(spec, qual, (_EnumBase,), names, version, None)
    members = {}
    shared = shared_member_names(stub_spec())
    for m, v in spec.enum.items():
        if enum_member_present(spec, m, names, shared):
            inst = object.__new__(cls)
            object.__setattr__(inst, "_name", m)
            object.__setattr__(inst, "_value", v)
            members[m] = inst
    for m, inst in members.items():
        setattr(cls, m, inst)
    cls.__members__ = dict(members)  # type: ignore[attr-defined]
    return cls


def generate(version_prefix: str, behaviours: Optional[Dict[str, type]] = None) -> types.ModuleType:
    """The module ``tensorrt.tensorrt`` of TensorRT ``version_prefix`` (``"10.9"``, ``"10.16"``, ``"11.4"``):
    every stub class whose name the version's ``.so`` carries, restricted to the members that ``.so`` carries,
    with ``behaviours`` (class name -> behaviour class; default :data:`trt_behaviour.BEHAVIOURS`) inside."""
    bdir = version_dir(version_prefix)
    version = re.search(r'^__version__\s*=\s*"([^"]+)"', (bdir / "__init__.py").read_text(), re.M).group(1)
    names = so_names(bdir)
    if behaviours is None:
        import trt_behaviour
        behaviours = trt_behaviour.BEHAVIOURS
    stub = stub_spec()
    mod = types.ModuleType("tensorrt.tensorrt")
    mod.__trt_version__ = version  # type: ignore[attr-defined]
    made: Dict[str, type] = {}

    def build(name: str) -> Optional[type]:
        if name in made:
            return made[name]
        spec = stub.classes.get(name)
        if spec is None or name not in names:
            return None
        bases = tuple(b for b in (build(n) for n in spec.bases if n != "object") if b is not None) or (_Core,)
        if spec.is_enum:
            cls = _enum_class(spec, name, names, version)
        else:
            cls = _make_class(spec, name, bases, names, version, behaviours.get(name))
        for nname, nspec in spec.nested.items():
            if nname in names:
                setattr(cls, nname, _enum_class(nspec, f"{name}.{nname}", names, version) if nspec.is_enum
                        else _make_class(nspec, f"{name}.{nname}", (_Core,), names, version,
                                         behaviours.get(f"{name}.{nname}")))
        for m, v in spec.enum.items():  # class-level enum members of a nested enum (ILogger.WARNING)
            nested_enum = next((getattr(cls, n) for n, s in spec.nested.items() if s.is_enum and m in s.enum
                                and hasattr(cls, n)), None)
            if nested_enum is not None and m in nested_enum.__members__:
                setattr(cls, m, nested_enum.__members__[m])
        made[name] = cls
        return cls

    for name in stub.classes:
        cls = build(name)
        if cls is not None:
            setattr(mod, name, cls)
    funcs = behaviours.get("<module>")
    for fname, m in stub.functions.items():
        if fname not in names:
            continue
        impl = getattr(funcs, fname, None) if funcs is not None else None
        fn = _checked(fname, m, impl.__func__ if isinstance(impl, staticmethod) else impl, version) if impl \
            else _unsimulated(fname, version)
        setattr(mod, fname, fn.__func__ if isinstance(fn, staticmethod) else fn)
    if funcs is not None:
        for n in vars(funcs):
            if not n.startswith("_") and n not in stub.functions:
                raise SurfaceError(f"behaviour <module>.{n} is not a function of TensorRT {version}")
    for cname, (enum_cls, member) in stub.constants.items():
        if cname in names and hasattr(mod, enum_cls):
            members = getattr(mod, enum_cls).__members__
            if member in members:
                setattr(mod, cname, members[member])
    mod.__all__ = [n for n in vars(mod) if not n.startswith("_")]  # type: ignore[attr-defined]
    return mod


@lru_cache(maxsize=None)
def _cached(version_prefix: str) -> types.ModuleType:
    return generate(version_prefix)


# -- installing it as ``tensorrt`` ----------------------------------------------------------------------------------------
def load(version_prefix: str, behaviours: Optional[Dict[str, type]] = None) -> types.ModuleType:
    """Make ``import tensorrt`` give TensorRT ``version_prefix``: the generated core as ``tensorrt.tensorrt`` and
    the bindings wheel's real ``__init__.py`` (its package path is the wheel's folder, so ``tensorrt.plugin`` is the
    wheel's real frontend). Undo with :func:`unload`."""
    unload()
    bdir = version_dir(version_prefix)
    core = _cached(version_prefix) if behaviours is None else generate(version_prefix, behaviours)
    core.__dict__.pop("_registry", None)  # a fresh plugin registry for every load
    sys.modules["tensorrt.tensorrt"] = core
    spec = importlib.util.spec_from_file_location("tensorrt", bdir / "__init__.py",
                                                  submodule_search_locations=[str(bdir)])
    trt = importlib.util.module_from_spec(spec)
    trt.tensorrt = core  # type: ignore[attr-defined]
    sys.modules["tensorrt"] = trt
    try:
        spec.loader.exec_module(trt)  # the wheel's own Python: `from .tensorrt import *`, nptype, Logger.Severity
    except BaseException:
        unload()
        raise
    return trt


def unload() -> None:
    for k in [k for k in sys.modules if k == "tensorrt" or k.startswith("tensorrt.")]:
        del sys.modules[k]


def frontend(version_prefix: str) -> Tuple[types.ModuleType, types.ModuleType]:
    """``(tensorrt, tensorrt.plugin)`` with the generated core under the wheel's real plugin frontend."""
    trt = load(version_prefix)
    return trt, importlib.import_module("tensorrt.plugin")
