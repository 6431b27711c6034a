"""Write an ONNX ``ModelProto`` to a file one initializer at a time.

``onnx.save`` (and ``proto.SerializeToString()``) build the whole serialized model in memory, in growing buffers,
before the first byte reaches the disk: exporting ViT-L-14-336 (1.8 GB of weights) peaked at 10.2 GB that way, on
top of the 2.5 GB model, which is more than a Jetson Orin NX has. Protobuf's wire format lets a message be written
in parts: a length-delimited field is its tag, its length and its bytes, repeated fields are simply repeated, and
field order does not matter to a parser. So the model is written as the model without its graph, then the graph's
tag and length (computed from ``ByteSize()``, which allocates nothing), the graph without its initializers, and each
initializer on its own. The peak is the model plus its largest single tensor. The file parses to the same proto.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Union

import onnx

from wmoe.onnx_meta import encode_varint as _varint

# field numbers of onnx.proto3 (ModelProto.graph = 7, GraphProto.initializer = 5); wire type 2 = length-delimited
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_LEN = 2


def _key(field: int) -> bytes:
    return _varint(field << 3 | _LEN)


def _copy_without(msg, skip: str):
    """A new message of ``msg``'s type holding every set field of ``msg`` but ``skip`` (copies only those fields)."""
    out = type(msg)()
    for fd, value in msg.ListFields():
        if fd.name == skip:
            continue
        # protobuf >= 5.29 has is_repeated and deprecates label (onnx allows protobuf back to 4.25)
        if fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED:
            getattr(out, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(out, fd.name).CopyFrom(value)
        else:
            setattr(out, fd.name, value)
    return out


def write_model(proto: onnx.ModelProto, f: Union[str, Path, BinaryIO]) -> None:
    """Serialize ``proto`` to the path or binary file ``f``; ``onnx.load`` of the result equals ``proto``."""
    if not isinstance(f, (str, Path)):
        _write(proto, f)
        return
    with open(f, "wb") as fh:
        _write(proto, fh)


def _write(proto: onnx.ModelProto, fh: BinaryIO) -> None:
    head = _copy_without(proto, "graph")
    fh.write(head.SerializeToString())
    if not proto.HasField("graph"):
        return
    graph = proto.graph
    rest = _copy_without(graph, "initializer").SerializeToString()
    key = _key(_GRAPH_INITIALIZER)
    sizes = [t.ByteSize() for t in graph.initializer]
    total = len(rest) + sum(len(key) + len(_varint(n)) + n for n in sizes)
    fh.write(_key(_MODEL_GRAPH) + _varint(total) + rest)
    for t, n in zip(graph.initializer, sizes):
        fh.write(key + _varint(n))
        fh.write(t.SerializeToString())  # apart from the key: concatenating would copy the tensor once more
