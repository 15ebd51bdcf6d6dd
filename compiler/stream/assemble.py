"""Stamp the processed segments into one model: the shared prefix once, each layer renamed for
its index, the head's ends, and one external-data file written tensor by tensor.

Works on ``ModelProto``s loaded without their data: tensors are copied from each segment's data
file into the output's in 64 MB chunks, so assembling an 8B model holds no weight in memory.
A layer's names become the names a full export would give (``model.layers.k.…``,
``past.k.*``, ``present.k.*``); every other value of layer ``k`` is prefixed ``L{k}/``.
Initializers a layer shares with the prefix (shape constants) are kept once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from smoothrot.compiler.stream.graph_parts import ancestors, split_parts
from smoothrot.core.manifest import MODEL_FILE

__all__ = ["SegmentFiles", "assemble", "layer_name"]

_DATA = f"{MODEL_FILE}.data"
_CHUNK = 64 * 2**20
_ALIGN = 64
_PATTERNS = ("model.layers.0.", "layers.0.", "past.0.", "present.0.")


def layer_name(name: str, k: int) -> str:
    """``name`` of the one-layer segment as layer ``k`` of the whole model."""
    for pattern in _PATTERNS:
        if name.startswith(pattern):
            return pattern.replace(".0.", f".{k}.") + name[len(pattern) :]
    return f"L{k}/{name}"


@dataclass(frozen=True)
class SegmentFiles:
    """A saved segment and the residual values entering and leaving its layer (the head's are
    one value, its final norm's input)."""

    directory: Path
    h_in: str
    h_out: str

    def load(self) -> onnx.ModelProto:
        return onnx.load(str(self.directory / MODEL_FILE), load_external_data=False)


class _DataWriter:
    def __init__(self, path: Path) -> None:
        self.file, self.offset = path.open("wb"), 0

    def add(self, tensor: onnx.TensorProto, directory: Path) -> onnx.TensorProto:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            return tensor
        info = {e.key: e.value for e in tensor.external_data}
        start, length = int(info.get("offset", 0)), int(info["length"])
        pad = -self.offset % _ALIGN
        self.file.write(b"\0" * pad)
        self.offset += pad
        with (directory / info["location"]).open("rb") as src:
            src.seek(start)
            left = length
            while left:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(f"{directory / info['location']} is truncated")
                self.file.write(chunk)
                left -= len(chunk)
        out = onnx.TensorProto()
        out.CopyFrom(tensor)
        del out.external_data[:]
        for key, value in (("location", _DATA), ("offset", self.offset), ("length", length)):
            entry = out.external_data.add()
            entry.key, entry.value = key, str(value)
        self.offset += length
        return out

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


class _Builder:
    def __init__(self, out: Path) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.value_info: dict[str, onnx.ValueInfoProto] = {}
        self.data = _DataWriter(out / _DATA)

    def take(
        self,
        proto: onnx.ModelProto,
        where: Path,
        nodes: list[onnx.NodeProto],
        rename: Callable[[str], str],
        rename_node: Callable[[str], str] = lambda n: n,
    ) -> None:
        g = proto.graph
        tensors = {t.name: t for t in g.initializer}
        infos = {vi.name: vi for vi in g.value_info}
        for node in nodes:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            if node.name:
                copy.name = rename_node(node.name)
            for j, x in enumerate(node.input):
                if x in tensors and rename(x) not in self.inits:
                    t = self.data.add(tensors[x], where)
                    if rename(x) != x:
                        t = _renamed(t, rename(x))
                    self.inits[rename(x)] = t
                copy.input[j] = rename(x) if x else x
            for j, y in enumerate(node.output):
                copy.output[j] = rename(y) if y else y
                if y in infos:
                    vi = onnx.ValueInfoProto()
                    vi.CopyFrom(infos[y])
                    vi.name = rename(y)
                    self.value_info[vi.name] = vi
            self.nodes.append(copy)


def _renamed(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(tensor)
    out.name = name
    return out


def _io(proto: onnx.ModelProto, names: dict[str, str]) -> tuple[list, list]:
    g = proto.graph
    inputs = [_vi(vi, names.get(vi.name, vi.name)) for vi in g.input]
    outputs = [_vi(vi, names.get(vi.name, vi.name)) for vi in g.output]
    return inputs, outputs


def _vi(vi: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    out.name = name
    return out


def assemble(layers: list[SegmentFiles], head: SegmentFiles, out: Path) -> onnx.ModelProto:
    """Write ``out/model.onnx`` (+ data) from the processed layer segments and head."""
    b = _Builder(out)
    head_proto = head.load()
    hg = list(head_proto.graph.node)
    gather = ancestors(hg, {head.h_in})
    b.take(head_proto, head.directory, [hg[i] for i in sorted(gather)], lambda x: x)
    inputs: list[onnx.ValueInfoProto] = []
    outputs: list[onnx.ValueInfoProto] = []
    previous = head.h_in
    for k, seg in enumerate(layers):
        proto = seg.load()
        g = proto.graph
        kv_in = [i.name for i in g.input if i.name.startswith("past.")]
        kv_out = [o.name for o in g.output if o.name.startswith("present.")]
        parts = split_parts(g, seg.h_in, seg.h_out, kv_in, kv_out)
        nodes = list(g.node)
        if k == 0:  # the shared prefix: mask, rotary tables (not the segment's own embedding)
            own_embedding = ancestors(nodes, {seg.h_in})
            shared = [nodes[i] for i in parts.prefix if i not in own_embedding]
            b.take(proto, seg.directory, shared, lambda x: x)
            inputs = [vi for vi in _io(proto, {})[0] if not vi.name.startswith("past.")]
        layer_nodes = [nodes[i] for i in parts.layer]
        outside = {x for i in parts.prefix + parts.suffix for x in nodes[i].input}
        graph_inputs = {vi.name for vi in g.input}
        produced = {y for n in layer_nodes for y in n.output}
        private = {t.name for t in g.initializer} - outside - graph_inputs
        own = produced | private | set(kv_in)

        def rename(
            x: str, k: int = k, own: set[str] = own, prev: str = previous, h_in: str = seg.h_in
        ) -> str:
            if x == h_in:
                return prev
            return layer_name(x, k) if x in own else x

        b.take(proto, seg.directory, layer_nodes, rename, lambda n, k=k: layer_name(n, k))
        names = {n: layer_name(n, k) for n in kv_in + kv_out}
        io_in, io_out = _io(proto, names)
        inputs += [vi for vi in io_in if vi.name in names.values()]
        outputs += [vi for vi in io_out if vi.name in names.values()]
        for vi in io_in:  # runtime inputs a pass added (kv_fp_prefix), once
            if vi.name not in names.values() and vi.name not in {i.name for i in inputs}:
                inputs.append(vi)
        previous = rename(seg.h_out)
    suffix = [hg[i] for i in range(len(hg)) if i not in gather]
    b.take(head_proto, head.directory, suffix, lambda x: previous if x == head.h_in else x)
    b.data.close()
    logits = [vi for vi in head_proto.graph.output if not vi.name.startswith("present.")]
    graph = onnx.helper.make_graph(
        b.nodes,
        head_proto.graph.name,
        _ordered_inputs(inputs),
        logits + outputs,
        initializer=list(b.inits.values()),
        value_info=[v for n, v in b.value_info.items() if n not in b.inits],
    )
    model = onnx.helper.make_model(graph, opset_imports=list(head_proto.opset_import))
    model.ir_version = head_proto.ir_version
    first = layers[0].load() if layers else head_proto
    props = {p.key: p.value for p in [*first.metadata_props, *head_proto.metadata_props]}
    onnx.helper.set_model_props(model, props)
    for p in [*first.opset_import]:
        if p.domain not in {q.domain for q in model.opset_import}:
            model.opset_import.append(p)
    onnx.save_model(model, str(out / MODEL_FILE))
    return model


def _ordered_inputs(inputs: list[onnx.ValueInfoProto]) -> list[onnx.ValueInfoProto]:
    """Token inputs first, then past.k.key/value in layer order, then the rest (as exported)."""
    head = [vi for vi in inputs if not vi.name.startswith("past.")]
    first = [vi for vi in head if vi.name in ("input_ids", "attention_mask", "position_ids")]
    rest = [vi for vi in head if vi not in first]
    past = [vi for vi in inputs if vi.name.startswith("past.")]
    return first + past + rest
