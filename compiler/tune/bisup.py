"""``compile --tune``: BiSup's error suppression, block by block, folded back into the graph.

After the lossy passes, each decoder block of the quantized graph is tuned so that its output
matches the float block's output, in order, with block ``i`` fed the output of the *tuned
quantized* blocks ``0 … i−1``: what is minimized is the error that accumulates down the layers,
not each layer's error on clean inputs. Both blocks are the ONNX graph's own nodes, run by
``TorchGraph`` in torch (``compiler/tune/torch_graph.py``): the float graph is the transformed graph
before the lossy passes (smoothing / rotations already in), the quantized one the graph about to
be saved, activation and KV quantizers included (rounding is straight-through in backward).

The tuned parameters live in constants the graph already has, so the tuned model has the same
nodes, shapes and speed as the untuned one:

- every INT4 weight's group scales (``DequantizeLinear``'s scale): ``s = s₀·exp(θ)``. The INT4
  codes stay those RTN / GPTQ chose; only their scales move.
- every RMSNorm's γ: ``γ = γ₀·exp(φ)``, a per-channel smoothing vector learned in front of the
  activation quantizer (before the online Hadamard where there is one).
- every INT4 activation quantizer's clipping: its scale is ``absmax(x) / d`` with ``d = 7`` as
  inserted (no clipping); tuning ``d = 7·exp(ψ)`` (one scalar per quantizer, the ``Div``'s
  constant) lets it trade the rounding error of all values for the saturation of the few
  largest, the per-token clipping ratio ``7 / d`` of QuaRot / OmniQuant, learned. INT8
  quantizers (w4a8) keep 127: the TensorRT W4A8 plugin expects the form as inserted.

The loss is the block output's mean squared error relative to the float output's mean square.
A block whose tuned loss is not below its untuned loss keeps its untuned constants, so tuning
never makes a block worse on the calibration data. Deterministic for a given seed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch
from tqdm import tqdm

from smoothrot.compiler.config import TuneConfig
from smoothrot.compiler.tune.graph_blocks import Block, decoder_blocks
from smoothrot.compiler.tune.torch_graph import TorchGraph, torch_feeds
from smoothrot.core.manifest import Manifest
from smoothrot.passes._graph import ACT_QUANT_MARK, constant_array, private_constant
from smoothrot.passes.model_map import DecoderLayer, build_model_map

__all__ = ["BlockTuning", "TuneResult", "tune_blocks"]


@dataclass(frozen=True)
class BlockTuning:
    block: int
    loss_untuned: float  # relative MSE of the block output, every block so far untuned
    loss_before: float  # the same, earlier blocks tuned, this one not yet
    loss_after: float  # with this block's tuned constants (= loss_before where not kept)
    kept: bool  # the tuned constants were folded in (they lowered the loss)
    parameters: int  # tuned scalars
    seconds: float


@dataclass
class TuneResult:
    config: TuneConfig
    blocks: list[BlockTuning] = field(default_factory=list)
    act_clip_quantizers: int = 0  # INT4 activation quantizers whose clipping was tuned


def _int4_clip_divisor(x: ir.Value) -> ir.Node | None:
    """The ``Div(absmax, 7)`` of the INT4 activation QDQ that produced ``x`` (None if none)."""
    dq = x.producer()
    if dq is None or dq.metadata_props.get(ACT_QUANT_MARK) != "int4":
        return None
    scale = dq.inputs[1].producer() if dq.inputs[1] is not None else None
    div = scale.inputs[0].producer() if scale is not None and scale.inputs[0] else None
    if div is None or div.op_type != "Div" or div.metadata_props.get(ACT_QUANT_MARK) != "int4":
        raise ValueError(f"activation QDQ {dq.name!r} is not in the form the tuner knows")
    return div


def _tuned_constants(layer: DecoderLayer, config: TuneConfig) -> tuple[list[ir.Value], int]:
    """The constants tuned in one block: weight scales (INT4 layers), the norms' γ and the
    INT4 activation quantizers' clipping divisors (the second value counts these)."""
    values = []
    for lin in layer.linears():
        dq = lin.dequantize
        if dq is not None:
            values.append(private_constant(dq, 1))
    if config.gamma:
        for norm in (layer.attn_norm, layer.mlp_norm):
            values.append(private_constant(norm.node, list(norm.node.inputs).index(norm.gamma)))
    divs = {}
    if config.act_clip:
        divs = {id(d): d for lin in layer.linears() if (d := _int4_clip_divisor(lin.input))}
        values += [private_constant(div, 1) for div in divs.values()]
    return values, len(divs)


def _relative_mse(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((y - target) ** 2).mean() / (target**2).mean().clamp_min(1e-30)


class _Side:
    """One graph (float or quantized): its runner, prologue values per batch and blocks."""

    def __init__(self, model: ir.Model, manifest: Manifest, batches: list[np.ndarray]) -> None:
        self.runner = TorchGraph(model)
        prologue, self.blocks = decoder_blocks(model, manifest.dims)
        needed = {v.name for b in self.blocks for n in b.nodes for v in n.inputs if v is not None}
        with torch.no_grad():
            self.env = [
                self.runner.run(torch_feeds(manifest, ids), prologue, keep=needed)
                for ids in batches
            ]
        first = self.blocks[0].input
        self.x = [env.pop(first) for env in self.env]  # the residual entering the next block

    def forward(
        self, block: Block, b: int, x: torch.Tensor, overrides: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        env = {**self.env[b], block.input: x}
        out = self.runner.run(env, block.nodes, overrides=overrides, keep=[block.output])
        return out[block.output]


def _batches(seqs: np.ndarray, config: TuneConfig) -> list[np.ndarray]:
    if len(seqs) < config.sequences:
        raise ValueError(f"tuning needs {config.sequences} sequences, got {len(seqs)}")
    seqs = seqs[: config.sequences]
    return [seqs[i : i + config.batch] for i in range(0, len(seqs), config.batch)]


def _order(count: int, config: TuneConfig, rng: np.random.Generator) -> Iterator[int]:
    for _ in range(config.epochs):
        yield from rng.permutation(count).tolist()


def _chain(
    side: _Side, block: Block, xs: list[torch.Tensor], over: dict[str, torch.Tensor]
) -> list[torch.Tensor]:
    """The block's output for every batch (no gradient)."""
    with torch.no_grad():
        return [side.forward(block, b, x, over) for b, x in enumerate(xs)]


def _mean_loss(ys: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    return float(np.mean([_relative_mse(y, t).item() for y, t in zip(ys, targets, strict=True)]))


def _optimize(
    side: _Side,
    block: Block,
    targets: list[torch.Tensor],
    base: dict[str, torch.Tensor],
    config: TuneConfig,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """Adam on ``θ = log(c / c₀)`` for every tuned constant ``c₀`` of ``base``; the tuned ``c``."""
    logs = {name: torch.zeros_like(t, requires_grad=True) for name, t in base.items()}

    def scaled() -> dict[str, torch.Tensor]:
        return {name: base[name] * torch.exp(logs[name]) for name in base}

    optimizer = torch.optim.Adam(list(logs.values()), lr=config.lr)
    for b in _order(len(side.x), config, rng):
        optimizer.zero_grad()
        _relative_mse(side.forward(block, b, side.x[b], scaled()), targets[b]).backward()
        optimizer.step()
    return {name: t.detach() for name, t in scaled().items()}


def tune_blocks(
    quant: ir.Model,
    fp: ir.Model,
    manifest: Manifest,
    seqs: np.ndarray,
    config: TuneConfig = TuneConfig(),
    progress: bool = True,
) -> TuneResult:
    """Tune ``quant``'s blocks against ``fp``'s (same architecture, before the lossy passes) on
    the token sequences ``seqs [S, L]``; the kept constants are written into ``quant``."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    batches = _batches(seqs, config)
    layers = build_model_map(quant, manifest.dims).require().layers
    # Before the graph is read: a shared constant (the exporter dedupes equal γ) gets a copy.
    tuned = [_tuned_constants(layer, config) for layer in layers]
    tuned_values = [values for values, _ in tuned]
    fp_side, q_side = _Side(fp, manifest, batches), _Side(quant, manifest, batches)
    if len(fp_side.blocks) != len(q_side.blocks) or len(layers) != len(q_side.blocks):
        raise ValueError("the float and quantized graphs have different decoder blocks")
    result = TuneResult(config, act_clip_quantizers=sum(clips for _, clips in tuned))
    untuned_x = list(q_side.x)  # the chain of untuned blocks, for the report
    bar = tqdm(range(len(layers)), desc="tune", unit="block", disable=not progress)
    for i in bar:
        start = time.perf_counter()
        block = q_side.blocks[i]
        targets = _chain(fp_side, fp_side.blocks[i], fp_side.x, {})
        values = tuned_values[i]
        base = {v.name: torch.from_numpy(constant_array(v).copy()) for v in values}
        untuned_x = _chain(q_side, block, untuned_x, base)
        untuned = _mean_loss(untuned_x, targets)
        before_x = _chain(q_side, block, q_side.x, base)
        before = _mean_loss(before_x, targets)
        tuned = _optimize(q_side, block, targets, base, config, rng)
        tuned_x = _chain(q_side, block, q_side.x, tuned)
        after = _mean_loss(tuned_x, targets)
        kept = after < before
        if kept:
            for value in values:
                new = tuned[value.name].numpy().astype(constant_array(value).dtype)
                value.const_value = ir.tensor(new, name=value.name)
        q_side.x, fp_side.x = (tuned_x if kept else before_x), targets
        size = sum(t.numel() for t in base.values())
        seconds = round(time.perf_counter() - start, 1)
        result.blocks.append(
            BlockTuning(i, untuned, before, min(after, before), kept, size, seconds)
        )
        bar.set_postfix(loss=f"{untuned:.2e}->{min(after, before):.2e}")
    return result
