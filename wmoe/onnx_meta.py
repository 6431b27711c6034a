"""Read an ONNX file's ``metadata_props`` with the standard library only: no onnx, no onnxruntime, no torch.

The ONNX ``ModelProto`` is a protobuf message; its top-level fields are walked on disk and only field 14
(``metadata_props``, repeated ``StringStringEntryProto{1: key, 2: value}``) is decoded. The graph (field 7, which
holds the weights) is skipped with a seek, so a 1.2 GB model costs a few reads. Used by the ORT session factory (to
refuse a plugin-flavor model before ONNX Runtime chokes on it), by the runtime and by export.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Union

from .errors import ContractError

_METADATA_PROPS, _IR_VERSION, _GRAPH = 14, 1, 7


def _varint(f: BinaryIO) -> int:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            raise EOFError("truncated varint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _varint_at(buf: bytes, i: int) -> "tuple[int, int]":
    """(value, next index) of the varint at ``buf[i]``."""
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _entry(buf: bytes) -> "tuple[str, str]":
    """Key and value of a serialized ``StringStringEntryProto``."""
    key = value = ""
    i = 0
    while i < len(buf):
        tag, i = _varint_at(buf, i)
        if tag & 7 != 2:
            raise ValueError("metadata entry with a non-string field")
        n, i = _varint_at(buf, i)
        s = buf[i:i + n].decode("utf-8")
        i += n
        if tag >> 3 == 1:
            key = s
        elif tag >> 3 == 2:
            value = s
    return key, value


def read_onnx_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """All ``metadata_props`` of the ONNX file at ``path``; a :class:`ContractError` naming the file when it is
    missing, empty or not an ONNX model."""
    p = Path(path)
    if not p.is_file():
        raise ContractError(f"{p}: no such ONNX file" if not p.exists() else f"{p} is not a file")
    size = p.stat().st_size
    if size == 0:
        raise ContractError(f"{p} is empty (0 bytes), not an ONNX model")
    meta: Dict[str, str] = {}
    seen = set()
    try:
        with open(p, "rb") as f:
            while f.tell() < size:
                tag = _varint(f)
                num, wire = tag >> 3, tag & 7
                if num == 0:
                    raise ValueError("field number 0")
                seen.add(num)
                if wire == 0:
                    _varint(f)
                elif wire == 1:
                    f.seek(8, 1)
                elif wire == 5:
                    f.seek(4, 1)
                elif wire == 2:
                    n = _varint(f)
                    if f.tell() + n > size:
                        raise ValueError("field runs past the end of the file")
                    if num == _METADATA_PROPS:
                        k, v = _entry(f.read(n))
                        meta[k] = v
                    else:
                        f.seek(n, 1)
                else:
                    raise ValueError(f"unsupported wire type {wire}")
    except (ValueError, EOFError, IndexError, UnicodeDecodeError) as e:
        raise ContractError(f"{p} is not an ONNX model (cannot parse it: {e})") from None
    except OSError as e:
        raise ContractError(f"{p}: cannot read it ({e})") from None
    if _IR_VERSION not in seen or _GRAPH not in seen:
        raise ContractError(f"{p} is not an ONNX model (no ir_version or graph)")
    return meta


_GRAPH_INITIALIZER, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 5, 13, 14, 1


def _fields(f: BinaryIO, end: int) -> "Iterator[tuple[int, int, int]]":
    """``(field number, wire type, length)`` of each field of the message that ends at byte ``end``; the file is left
    at the field's value (a varint is read, fixed-size values are skipped); the caller may read or skip a
    length-delimited value: it is skipped for it when the caller has not moved."""
    while f.tell() < end:
        tag = _varint(f)
        num, wire = tag >> 3, tag & 7
        if num == 0:
            raise ValueError("field number 0")
        if wire == 0:
            yield num, wire, _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, 1)
        elif wire == 2:
            n = _varint(f)
            start = f.tell()
            if start + n > end:
                raise ValueError("field runs past the end of its message")
            yield num, wire, n
            f.seek(start + n)
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _each_graph_field(path: Union[str, Path], field: int, visit: Callable[[BinaryIO, int], None]) -> None:
    """Call ``visit(f, length)`` with the file at the value of each length-delimited field number ``field`` of the
    model's graph (``GraphProto``: 1 node, 5 initializer); everything else is skipped with seeks. A
    :class:`ContractError` naming the file when it (or what ``visit`` reads) cannot be parsed."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            for num, wire, n in _fields(f, size):
                if num != _GRAPH or wire != 2:
                    continue
                for gnum, gwire, gn in _fields(f, f.tell() + n):
                    if gnum == field and gwire == 2:
                        visit(f, gn)
    except (ValueError, EOFError, IndexError, UnicodeDecodeError) as e:
        raise ContractError(f"{p} is not an ONNX model (cannot parse it: {e})") from None
    except OSError as e:
        raise ContractError(f"{p}: cannot read it ({e})") from None


def read_onnx_external_files(path: Union[str, Path]) -> List[str]:
    """The file names (relative to the model's folder) that hold the ONNX model's external weights
    (``TensorProto.data_location == EXTERNAL``, key ``location``), sorted; standard library only, the weights are
    skipped with seeks. :class:`ContractError` naming the file when it cannot be parsed."""
    names = set()

    def tensor(f: BinaryIO, n: int) -> None:
        external, locations = False, []
        for tnum, twire, tv in _fields(f, f.tell() + n):
            if tnum == _TENSOR_DATA_LOCATION and twire == 0:
                external = tv == _EXTERNAL
            elif tnum == _TENSOR_EXTERNAL_DATA and twire == 2:
                k, v = _entry(f.read(tv))
                if k == "location":
                    locations.append(v)
        if external:
            names.update(locations)

    _each_graph_field(path, _GRAPH_INITIALIZER, tensor)
    return sorted(names)

_GRAPH_NODE, _NODE_NAME, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 3, 4, 5, 7
_ATTR_NAME, _ATTR_S, _ATTR_TYPE, _ATTR_STRING = 1, 4, 20, 3  # AttributeProto: name, s, type; type STRING


def _message(buf: bytes) -> "Iterator[tuple[int, int, Union[int, bytes]]]":
    """``(field number, wire type, value)`` of each field of a serialized message held in memory: an int for a
    varint, the bytes for a length-delimited field; fixed-size fields are skipped."""
    i = 0
    while i < len(buf):
        tag, i = _varint_at(buf, i)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _varint_at(buf, i)
            yield num, wire, v
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 2:
            n, i = _varint_at(buf, i)
            if i + n > len(buf):
                raise ValueError("field runs past the end of its message")
            yield num, wire, buf[i:i + n]
            i += n
        else:
            raise ValueError(f"unsupported wire type {wire}")


@dataclass(frozen=True)
class OnnxNode:
    """A graph node as :func:`read_onnx_nodes` reads it: its name, op type, domain and string attributes."""
    name: str
    op_type: str
    domain: str
    strings: Dict[str, bytes]


def read_onnx_nodes(path: Union[str, Path], domain: str) -> List[OnnxNode]:
    """The top-level graph nodes of the ONNX model at ``path`` in ``domain`` (a custom-op domain: the TensorRT plugin
    nodes), with their string attributes; standard library only (the engine build runs where the onnx package is not
    installed), the weights skipped with seeks. :class:`ContractError` naming the file when it cannot be parsed."""
    nodes: List[OnnxNode] = []

    def node(f: BinaryIO, n: int) -> None:
        name = op_type = node_domain = ""
        strings: Dict[str, bytes] = {}
        for fnum, fwire, v in _message(f.read(n)):
            if fwire != 2 or not isinstance(v, bytes):
                continue
            if fnum == _NODE_NAME:
                name = v.decode("utf-8")
            elif fnum == _NODE_OP_TYPE:
                op_type = v.decode("utf-8")
            elif fnum == _NODE_DOMAIN:
                node_domain = v.decode("utf-8")
            elif fnum == _NODE_ATTRIBUTE:
                attr = {anum: av for anum, _, av in _message(v)}
                # a STRING attribute; protobuf leaves out an empty ``s``, so the type says it is one
                if _ATTR_NAME in attr and (_ATTR_S in attr or attr.get(_ATTR_TYPE) == _ATTR_STRING):
                    strings[bytes(attr[_ATTR_NAME]).decode("utf-8")] = bytes(attr.get(_ATTR_S, b""))
        if node_domain == domain:
            nodes.append(OnnxNode(name, op_type, node_domain, strings))

    _each_graph_field(path, _GRAPH_NODE, node)
    return nodes

_GRAPH_INPUT, _GRAPH_OUTPUT = 11, 12  # GraphProto: repeated ValueInfoProto input, output
#: ValueInfoProto.name, .type; TypeProto.tensor_type; Tensor.shape; TensorShapeProto.dim; Dimension.dim_value
_VI_NAME, _VI_TYPE, _TYPE_TENSOR, _TENSOR_SHAPE, _SHAPE_DIM, _DIM_VALUE = 1, 2, 1, 2, 1, 1


def read_onnx_io(path: Union[str, Path]) -> "tuple[Dict[str, List[Optional[int]]], Dict[str, List[Optional[int]]]]":
    """The graph's inputs and outputs, ``name -> shape`` in order (a dynamic or unknown axis is None); standard
    library only, the weights skipped with seeks. :class:`ContractError` naming the file when it cannot be parsed."""
    found: "Dict[int, Dict[str, List[Optional[int]]]]" = {_GRAPH_INPUT: {}, _GRAPH_OUTPUT: {}}

    def value_info(which: int) -> Callable[[BinaryIO, int], None]:
        def visit(f: BinaryIO, n: int) -> None:
            name, shape = "", []
            for num, wire, v in _message(f.read(n)):
                if num == _VI_NAME and isinstance(v, bytes):
                    name = v.decode("utf-8")
                elif num == _VI_TYPE and isinstance(v, bytes):
                    for tnum, _, tv in _message(v):
                        if tnum != _TYPE_TENSOR or not isinstance(tv, bytes):
                            continue
                        for snum, _, sv in _message(tv):
                            if snum != _TENSOR_SHAPE or not isinstance(sv, bytes):
                                continue
                            for dnum, _, dv in _message(sv):
                                if dnum == _SHAPE_DIM and isinstance(dv, bytes):
                                    value = [x for k, w, x in _message(dv) if k == _DIM_VALUE and w == 0]
                                    shape.append(int(value[0]) if value else None)
            found[which][name] = shape
        return visit

    _each_graph_field(path, _GRAPH_INPUT, value_info(_GRAPH_INPUT))
    _each_graph_field(path, _GRAPH_OUTPUT, value_info(_GRAPH_OUTPUT))
    return found[_GRAPH_INPUT], found[_GRAPH_OUTPUT]


def encode_varint(n: int) -> bytes:
    """Protobuf's base-128 varint of ``n`` >= 0 (also used by export/onnx_write.py)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _encode_entry(key: str, value: str) -> bytes:
    """A top-level ``metadata_props`` field holding ``StringStringEntryProto{key, value}``."""
    k, v = key.encode("utf-8"), value.encode("utf-8")
    body = b"\x0a" + encode_varint(len(k)) + k + b"\x12" + encode_varint(len(v)) + v
    return encode_varint(_METADATA_PROPS << 3 | 2) + encode_varint(len(body)) + body


def write_onnx_metadata(path: Union[str, Path], updates: Dict[str, str], remove=(),
                        out: Union[str, Path, None] = None) -> Path:
    """Set ``metadata_props`` entries of the ONNX file at ``path`` with the standard library only (no onnx, no
    torch: the runtime-only install can do it): entries whose key is in ``updates`` or ``remove`` are dropped, the
    ``updates`` appended; every other top-level field (the graph with its weights) is copied byte for byte.

    Written to ``out`` (default: ``path`` itself) beside the target, then renamed over it, so a camera loop that
    opens the model meanwhile reads the old file or the new one, never a torn one. External-data files (models
    over 2 GB) are untouched: they are referenced by name from the same folder."""
    from .atomic import atomic_path
    read_onnx_metadata(path)  # a ContractError naming the file when it is not an ONNX model
    p, target = Path(path), Path(out) if out is not None else Path(path)
    drop = set(updates) | set(remove)
    size = p.stat().st_size
    with open(p, "rb") as f, atomic_path(target) as tmp, open(tmp, "wb") as w:
        start = 0
        for num, wire, n in _fields(f, size):  # read_onnx_metadata accepted the file: no parse error here
            end = f.tell() + n if wire == 2 else f.tell()
            keep = not (num == _METADATA_PROPS and wire == 2 and _entry(f.read(n))[0] in drop)
            if keep:
                f.seek(start)
                left = end - start
                while left:  # copy the field's bytes in chunks (the graph field holds the weights)
                    chunk = f.read(min(left, 1 << 22))
                    w.write(chunk)
                    left -= len(chunk)
            f.seek(end)
            start = end
        for k, v in updates.items():
            w.write(_encode_entry(k, v))
    return target
