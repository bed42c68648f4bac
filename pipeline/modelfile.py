"""A structural check of model.onnx that needs neither the onnx package nor a runtime.

Every `thermoscreen run` checks its model file before ONNX Runtime (or TensorRT) reads it: a
runtime handed a truncated graph or a weight shorter than its shape may crash instead of
raising, and a weight kept in an external file could point anywhere. `onnx.checker` did this
job, but importing `onnx` (and `ml_dtypes` with it) took 1.3-2.8 s and 20 MB of every start
(`python -X importtime`, 2026-12-01), more than the whole rest of the start-up. This module reads
the protobuf wire format directly: every length must fit inside the file, the model must have an
IR version, an opset and a graph with nodes, and every tensor stored in the graph (initializers,
sparse initializers, Constant attributes, subgraphs, functions) must hold its data inside the
file, exactly as many elements as its shape says. Operator and type checks are the runtime's
(ONNX Runtime resolves the graph against its schemas on load and raises); `thermoscreen export`
still runs `onnx.checker` in full when it writes a model.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# ONNX field numbers (onnx/onnx-ml.proto)
_MODEL_IR_VERSION, _MODEL_OPSET, _MODEL_GRAPH, _MODEL_FUNCTIONS = 1, 8, 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_T_DIMS, _T_TYPE, _T_SEGMENT, _T_NAME, _T_RAW, _T_EXTERNAL, _T_LOCATION = 1, 2, 3, 8, 9, 13, 14
_T_FLOAT, _T_INT32, _T_STRING, _T_INT64, _T_DOUBLE, _T_UINT64 = 4, 5, 6, 7, 10, 11
_LOCATION_EXTERNAL = 1
_STRING, _COMPLEX64, _COMPLEX128 = 8, 14, 15

# bits per element of each TensorProto.DataType (raw_data packs sub-byte types)
_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64}
_BITS |= {14: 64, 15: 128, 16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8}
_BITS |= {25: 2, 26: 2, 27: 6, 28: 6}
_TYPED = (_T_FLOAT, _T_INT32, _T_INT64, _T_DOUBLE, _T_UINT64)  # one entry per value
_SUB_BYTE = (21, 22, 23, 25, 26, 27, 28)  # typed fields pack these several to an entry
_FIXED_WIDTH = {_T_FLOAT: 4, _T_DOUBLE: 8}  # packed fixed32/fixed64; the rest are varints

Field = tuple[int, int, "int | memoryview"]


INCOMPLETE, EXTERNAL, SIZE = "incomplete", "external", "size"


class ModelFileError(ValueError):
    """The file is not a complete, self-contained ONNX model. `kind`: INCOMPLETE (cut short, or
    not protobuf), EXTERNAL (a tensor's data in another file) or SIZE (a tensor holds more or
    less data than its shape says)."""

    def __init__(self, reason: str, kind: str = INCOMPLETE) -> None:
        super().__init__(reason)
        self.kind = kind


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ModelFileError("the file ends inside a number")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ModelFileError("a number longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[Field]:
    """(field number, wire type, value) of one message; length-delimited values as views."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ModelFileError("field number 0: not protobuf")
        value: int | memoryview
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            value, pos = 0, pos + (8 if wire == 1 else 4)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        else:
            raise ModelFileError(f"wire type {wire}: not protobuf")
        if pos > end:
            raise ModelFileError("a field runs past the end of the file")
        yield number, wire, value


def _messages(buf: memoryview, number: int) -> Iterator[memoryview]:
    for field, wire, value in _fields(buf):
        if field == number and wire == 2 and isinstance(value, memoryview):
            yield value


def check_model_bytes(data: bytes | memoryview) -> None:
    """Raise ModelFileError (one line) unless `data` is a complete, self-contained ONNX model."""
    buf = memoryview(data)
    seen = {number for number, _, _ in _fields(buf)}
    for number, what in (
        (_MODEL_IR_VERSION, "no IR version"),
        (_MODEL_OPSET, "no opset"),
        (_MODEL_GRAPH, "no graph"),
    ):
        if number not in seen:
            raise ModelFileError(what)
    for graph in _messages(buf, _MODEL_GRAPH):
        _check_graph(graph, top=True)
    for function in _messages(buf, _MODEL_FUNCTIONS):
        for node in _messages(function, _FUNCTION_NODE):
            _check_node(node)


def check_model_file(path: Path) -> None:
    """`check_model_bytes` on a file, mapped rather than read: only the pages holding field
    headers are touched, not the weights, so the check adds nothing to the peak memory."""
    if path.stat().st_size == 0:
        check_model_bytes(b"")
    error: ModelFileError | None = None
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            check_model_bytes(view)
        except ModelFileError as exc:  # re-raised below, once its traceback's views are gone
            error = ModelFileError(str(exc), exc.kind)
        view.release()
    if error is not None:
        raise error


def _check_graph(graph: memoryview, top: bool = False) -> None:
    nodes = 0
    for number, wire, value in _fields(graph):
        if wire != 2 or not isinstance(value, memoryview):
            continue
        if number == _GRAPH_NODE:
            nodes += 1
            _check_node(value)
        elif number == _GRAPH_INITIALIZER:
            _check_tensor(value)
        elif number == _GRAPH_SPARSE:
            _check_sparse(value)
    if top and nodes == 0:
        raise ModelFileError("the graph has no nodes")


def _check_node(node: memoryview) -> None:
    for attribute in _messages(node, _NODE_ATTRIBUTE):
        for number, wire, value in _fields(attribute):
            if wire != 2 or not isinstance(value, memoryview):
                continue
            if number in (_ATTR_T, _ATTR_TENSORS):
                _check_tensor(value)
            elif number in (_ATTR_G, _ATTR_GRAPHS):
                _check_graph(value)
            elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
                _check_sparse(value)


def _check_sparse(sparse: memoryview) -> None:
    for number, _wire, value in _fields(sparse):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES) and isinstance(value, memoryview):
            _check_tensor(value)


def _check_tensor(tensor: memoryview) -> None:
    dims: list[int] = []
    dtype, name, raw, segmented = 0, "", None, False
    counts: dict[int, int] = {}
    for number, wire, value in _fields(tensor):
        if number == _T_DIMS:
            dims.extend(_ints(value) if isinstance(value, memoryview) else [int(value)])
        elif number == _T_TYPE and isinstance(value, int):
            dtype = value
        elif number == _T_NAME and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "replace")
        elif number == _T_RAW and isinstance(value, memoryview):
            raw = len(value)
        elif number == _T_SEGMENT:
            segmented = True
        elif number == _T_EXTERNAL or (number == _T_LOCATION and value == _LOCATION_EXTERNAL):
            raise ModelFileError(
                f"initializer {name!r} points to external data; the model contract is one "
                "self-contained file",
                EXTERNAL,
            )
        elif number in _TYPED:
            counts[number] = counts.get(number, 0) + _count(number, wire, value)
    if segmented or dtype == _STRING or dtype not in _BITS:
        return
    if raw is None and dtype in _SUB_BYTE:
        return  # strings have no fixed size; unknown types are the runtime's to refuse
    _check_size(name, dims, dtype, raw, counts)


def _check_size(
    name: str, dims: list[int], dtype: int, raw: int | None, counts: dict[int, int]
) -> None:
    elements = math.prod(dims)
    if raw is not None:
        need = math.ceil(elements * _BITS[dtype] / 8)
        got, unit = raw, "bytes"
    else:
        per = 2 if dtype in (_COMPLEX64, _COMPLEX128) else 1
        need, got, unit = elements * per, sum(counts.values()), "values"
    if got != need:
        size = "too small" if got < need else "too large"
        raise ModelFileError(
            f"initializer {name!r} holds {got} {unit}, {size} for its shape {dims} ({need} {unit})",
            SIZE,
        )


def _ints(packed: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(packed):
        value, pos = _varint(packed, pos)
        values.append(value - (1 << 64) if value >= 1 << 63 else value)
    return values


def _count(number: int, wire: int, value: int | memoryview) -> int:
    """How many values one occurrence of a typed data field holds (packed or not)."""
    if not isinstance(value, memoryview) or wire != 2:
        return 1
    width = _FIXED_WIDTH.get(number)
    if width is not None:
        return len(value) // width
    return int(np.count_nonzero(np.frombuffer(value, dtype=np.uint8) < 0x80))
