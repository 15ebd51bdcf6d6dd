"""Reading a model directory's graph: ``model.onnx`` and its external data, checked first.

Every reader of a model directory's graph comes through :func:`load_graph` (onnx_ir, for the
passes) or :func:`check_graph_files` (before an ONNX Runtime session opens the same files), so
a damaged or hostile directory is one ``SmoothrotError`` naming the file, never a traceback:

- ``model.onnx`` that does not parse (protobuf ``DecodeError``, onnx errors) is refused;
- every external-data ``location`` must be a relative path inside the directory: an absolute
  one, one with ``..``, or one that resolves (through symlinks) outside is refused, naming the
  tensor and the location, before any byte of it is read;
- every external tensor's bytes must lie inside its file: a missing or truncated
  ``model.onnx.data`` is refused, naming the file (so is a hard-linked one, as onnx_ir does);
- the manifest's dimensions must agree with the graph (past inputs, KV heads, head size,
  vocabulary and hidden size of the embedding table).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePath

import onnx_ir as ir

from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import MANIFEST_NAME, Manifest, load_manifest

__all__ = ["check_graph_files", "external_tensors", "load_graph"]


def _graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph (If / Loop / Scan bodies) and every function."""
    todo: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    while todo:
        graph = todo.pop()
        yield graph
        for node in graph:
            for attr in node.attributes.values():
                if attr.type is ir.AttributeType.GRAPH:
                    todo.append(attr.as_graph())
                elif attr.type is ir.AttributeType.GRAPHS:
                    todo.extend(attr.as_graphs())


def external_tensors(model: ir.Model) -> Iterator[ir.ExternalTensor]:
    """Every tensor of ``model`` whose bytes live in an external file (initializers of every
    graph, and tensor attributes such as a ``Constant``'s value)."""
    for graph in _graphs(model):
        if isinstance(graph, ir.Graph):
            for value in graph.initializers.values():
                if isinstance(value.const_value, ir.ExternalTensor):
                    yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.type is ir.AttributeType.TENSOR:
                    tensors = [attr.as_tensor()]
                elif attr.type is ir.AttributeType.TENSORS:
                    tensors = list(attr.as_tensors())
                else:
                    continue
                yield from (t for t in tensors if isinstance(t, ir.ExternalTensor))


def _check_location(directory: Path, tensor: ir.ExternalTensor, sizes: dict[str, int]) -> None:
    """The tensor's file is a file inside ``directory`` and holds all of its bytes."""
    location = os.fspath(tensor.location)
    where = f"external data of tensor {tensor.name!r} at location {location!r}"
    if not location or os.path.isabs(location):
        raise SmoothrotError(f"{directory}: {where} is not a relative path; refusing")
    if ".." in PurePath(location.replace("\\", "/")).parts:
        raise SmoothrotError(f"{directory}: {where} leaves the model directory; refusing")
    path = directory / location
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        raise SmoothrotError(
            f"{directory}: {where} resolves outside the model directory "
            f"(to {path.resolve()}); refusing"
        )
    if location not in sizes:
        if not path.is_file():
            raise SmoothrotError(f"{path} is missing (it holds the {where})")
        stat = path.stat()
        if stat.st_nlink > 1:  # onnx_ir refuses these too: the bytes may be any file's
            raise SmoothrotError(
                f"{path} has {stat.st_nlink} hard links (the {where}); copy it instead"
            )
        sizes[location] = stat.st_size
    offset, length = tensor.offset or 0, tensor.length
    needed = tensor.nbytes if length is None else length
    if length is not None and length < tensor.nbytes:
        raise SmoothrotError(
            f"{path} is corrupt: tensor {tensor.name!r} has {length} bytes stored, its shape "
            f"needs {tensor.nbytes}"
        )
    if offset < 0 or offset + needed > sizes[location]:
        raise SmoothrotError(
            f"{path} is truncated: tensor {tensor.name!r} needs bytes {offset}..{offset + needed}"
            f" but the file has {sizes[location]}"
        )


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) else None


def _check_dims(model: ir.Model, manifest: Manifest, model_path: Path) -> None:
    """The manifest's dimensions are the graph's (where the graph states them)."""
    d = manifest.dims
    inputs = {v.name: v for v in model.graph.inputs}
    outputs = {v.name: v for v in model.graph.outputs}
    mismatch = f"{model_path.parent / MANIFEST_NAME} does not match {model_path}"
    for name in manifest.inputs:
        if name not in inputs:
            raise SmoothrotError(f"{mismatch}: the graph has no input {name!r}")
    for name in manifest.outputs:
        if name not in outputs:
            raise SmoothrotError(f"{mismatch}: the graph has no output {name!r}")
    expected = {1: ("kv_heads", d.kv_heads), 3: ("head_dim", d.head_dim)}
    for name in manifest.past_names:
        shape = inputs[name].shape
        if shape is None or len(shape) != 4:
            raise SmoothrotError(f"{mismatch}: input {name!r} is not [batch, heads, past, dim]")
        for axis, (field, want) in expected.items():
            got = _static(shape[axis])
            if got is not None and got != want:
                raise SmoothrotError(f"{mismatch}: {field} is {want} but {name} has {got}")
    logits = outputs.get("logits")
    if logits is not None and logits.shape is not None and len(logits.shape) > 0:
        got = _static(logits.shape[-1])
        if got is not None and got != d.vocab:
            raise SmoothrotError(f"{mismatch}: vocab is {d.vocab} but logits have {got}")
    for node in model.graph:
        table, ids = (node.inputs + (None, None))[:2]
        if node.op_type == "Gather" and ids is not None and ids.name == "input_ids":
            if table is not None and table.shape is not None and len(table.shape) == 2:
                got_shape = tuple(_static(s) for s in table.shape)
                if got_shape != (d.vocab, d.hidden) and None not in got_shape:
                    raise SmoothrotError(
                        f"{mismatch}: vocab x hidden is {d.vocab} x {d.hidden} but the "
                        f"embedding table {table.name} is {got_shape[0]} x {got_shape[1]}"
                    )
            break


def load_graph(directory: str | Path, manifest: Manifest | None = None) -> ir.Model:
    """``directory``'s graph (external data left lazy), after the checks in the module doc."""
    directory = Path(directory)
    manifest = manifest if manifest is not None else load_manifest(directory)
    path = directory / manifest.model_file
    if not path.is_file():
        raise SmoothrotError(f"{directory} has no {manifest.model_file}")
    try:
        model = ir.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, onnx / onnx_ir errors
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SmoothrotError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {reason})"
        ) from exc
    sizes: dict[str, int] = {}
    for tensor in external_tensors(model):
        _check_location(directory, tensor, sizes)
    _check_dims(model, manifest, path)
    return model


def check_graph_files(directory: str | Path, manifest: Manifest | None = None) -> ir.Model:
    """The checks of :func:`load_graph`, for a caller that opens the files itself (an ONNX
    Runtime session); returns the graph (weights not read) for any further look at it."""
    return load_graph(directory, manifest)
