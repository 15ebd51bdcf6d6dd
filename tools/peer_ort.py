"""The peer: ONNX Runtime's own ``MatMulNBitsQuantizer`` applied to one of our exported models.

Writes a model directory our runner reads (model + external data, tokenizer, manifest), so the
peer is evaluated by exactly the same code, text and protocol as our recipes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

from smoothrot.compiler.modeldir.model_dir import write_model_dir
from smoothrot.compiler.modeldir.model_graph import load_graph
from smoothrot.compiler.modeldir.outdir import atomic_output_dir
from smoothrot.core.manifest import load_manifest
from smoothrot.passes.model_map import build_model_map

__all__ = ["PeerAlgorithm", "PeerConfig", "quantize_with_ort"]


class PeerAlgorithm(enum.Enum):
    RTN = "rtn"
    HQQ = "hqq"  # ORT's HQQ always has zero points (asymmetric)


@dataclass(frozen=True)
class PeerConfig:
    algorithm: PeerAlgorithm = PeerAlgorithm.RTN
    block_size: int = 128
    accuracy_level: int = 0  # MatMulNBits attribute; 4 = int8 activations per block
    lm_head: bool = False  # quantize lm_head too (same treatment as ours by default: no)


def quantize_with_ort(source: Path, out: Path, config: PeerConfig) -> Path:
    from onnxruntime.quantization import matmul_nbits_quantizer as mnb

    manifest = load_manifest(source)
    exclude = []
    if not config.lm_head:
        mm = build_model_map(load_graph(source, manifest), manifest.dims).require()
        exclude = [mm.lm_head.node.name] if mm.lm_head is not None else []
    model = onnx.load(str(source / manifest.model_file))
    if config.algorithm is PeerAlgorithm.HQQ:
        algo = mnb.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=4)
    else:
        algo = mnb.DefaultWeightOnlyQuantConfig(
            block_size=config.block_size,
            is_symmetric=True,
            accuracy_level=config.accuracy_level,
        )
    quantizer = mnb.MatMulNBitsQuantizer(
        model,
        block_size=config.block_size,
        is_symmetric=True,
        accuracy_level=config.accuracy_level,
        nodes_to_exclude=exclude,
        algo_config=algo,
    )
    quantizer.process()
    result = quantizer.model.model
    # HQQ's config carries no accuracy level, and RTN leaves the attribute out at 0: state it
    # on every node so the shipped level is read from the graph, not from ORT's default.
    for node in result.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.append(
                onnx.helper.make_attribute("accuracy_level", config.accuracy_level)
            )
    stage = {"stage": f"ort_matmulnbits_{config.algorithm.value}", "seconds": 0.0}
    with atomic_output_dir(out) as tmp:
        write_model_dir(ir.serde.deserialize_model(result), source, manifest, tmp, [stage])
    return out
