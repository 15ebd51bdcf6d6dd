"""The peer: ONNX Runtime's own ``MatMulNBitsQuantizer`` applied to one of our exported models.

Writes a model directory our runner reads (model + external data, tokenizer, manifest), so the
peer is evaluated by exactly the same code, text and protocol as our recipes.
"""

from __future__ import annotations

import enum
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import onnx_ir as ir

from smoothrot.compiler.manifest import load_manifest
from smoothrot.compiler.outdir import atomic_output_dir
from smoothrot.compiler.pipeline import COPIED_FILES
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
        mm = build_model_map(ir.load(str(source / manifest.model_file)), manifest.dims).require()
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
    if config.algorithm is PeerAlgorithm.HQQ:  # HQQ config carries no accuracy level
        for node in result.graph.node:
            if node.op_type == "MatMulNBits":
                for attr in node.attribute:
                    if attr.name == "accuracy_level":
                        attr.i = config.accuracy_level
    with atomic_output_dir(out) as tmp:
        onnx.save(
            result,
            str(tmp / manifest.model_file),
            save_as_external_data=True,
            location=f"{manifest.model_file}.data",
        )
        for f in COPIED_FILES:
            if (source / f).is_file():
                shutil.copy(source / f, tmp / f)
        stage = {"stage": f"ort_matmulnbits_{config.algorithm.value}", "seconds": 0.0}
        replace(manifest, stages=manifest.stages + [stage]).save(tmp)
    return out
