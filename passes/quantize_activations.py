"""Activation quantization: per-token dynamic symmetric INT8 / INT4 QDQ at the inputs of the
decoder Linears (and lm_head's when asked). Semantics: ``core/qdq.py``.

Linears that share an input (q/k/v, gate/up) share one QDQ. The QDQ sits right before the
MatMuls, after any online rotation (``x := Q(x R)``), which is where rotation helps. An input
already produced by an activation QDQ is left alone (idempotent), and the model map sees through
the QDQ nodes (marked ``smoothrot.act_quant``), so later passes still find every Linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from smoothrot.core.manifest import ModelDims
from smoothrot.core.pass_infra import PassReport
from smoothrot.core.qdq import QuantBits
from smoothrot.passes._conditions import require_not_lowered
from smoothrot.passes._graph import ACT_QUANT_MARK
from smoothrot.passes._qdq import dynamic_qdq
from smoothrot.passes.model_map import LAYER_SITES, Linear, Site, build_model_map

__all__ = ["ActQuantConfig", "ActQuantPass"]


@dataclass(frozen=True)
class ActQuantConfig:
    bits: QuantBits = QuantBits.INT8
    lm_head: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.bits, QuantBits):
            raise ValueError(f"bits must be a QuantBits, got {self.bits!r}")


def _quantize_input(graph: ir.Graph, linears: list[Linear], tag: str, bits: QuantBits) -> bool:
    x = linears[0].input
    producer = x.producer()
    if producer is not None and producer.metadata_props.get(ACT_QUANT_MARK):
        return False
    channels = int(linears[0].weight.shape[0])
    first = min(linears, key=lambda lin: list(graph).index(lin.node)).node
    y = dynamic_qdq(graph, x, bits, channels, f"{tag}.act", ACT_QUANT_MARK, first)
    for lin in linears:
        lin.node.replace_input_with(0, y)
    return True


class ActQuantPass(ir.passes.InPlacePass):
    name = "quantize_activations"

    def __init__(self, dims: ModelDims, config: ActQuantConfig = ActQuantConfig()) -> None:
        super().__init__()
        self.dims, self.config = dims, config

    def requires(self, model: ir.Model) -> None:
        require_not_lowered(model, self.name)

    def call(self, model: ir.Model) -> PassReport:
        mm = build_model_map(model, self.dims).require()
        sites = LAYER_SITES | ({Site.LM_HEAD} if self.config.lm_head else set())
        quantized = []
        for site, tag, linears in mm.site_groups():
            if site in sites and _quantize_input(model.graph, linears, tag, self.config.bits):
                quantized.append(tag)
        return PassReport(model, bool(quantized), {"quantized": quantized})
