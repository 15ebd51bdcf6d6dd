"""Weight quantization: every decoder Linear's ``B`` (and optionally lm_head's) becomes an INT4
initializer + ``DequantizeLinear(axis, block_size)`` (opset 21, symmetric, no zero-point).

Per layer: the group size is fitted to the grouped dimension (``fit_group_size``; the used size
is recorded), clipping ratios are searched on the layer's calibration Hessian, then RTN or GPTQ
quantizes; with ``AdaDim`` both per-OC and per-IC are quantized and the one with the smaller
calibration output error ``tr(ΔBᵀHΔB)`` is kept — both errors are recorded in ``results``.

The DequantizeLinear output keeps the float weight's name, so the manifest's module → weight
map and the model map still find every Linear. Already-quantized Linears are left alone
(idempotent; ``modified=False`` when nothing is left to do).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from smoothrot.core.errors import SmoothrotError
from smoothrot.core.int4 import (
    DEFAULT_CLIP_GRID,
    Grouping,
    QuantizedWeight,
    fit_group_size,
    output_error,
    quantize_rtn,
    search_clip,
)
from smoothrot.core.manifest import ModelDims
from smoothrot.core.pass_infra import PassReport
from smoothrot.passes._conditions import ensure_blocked_int4, require_not_lowered
from smoothrot.passes._graph import constant_array, drop_dead_initializers, new_initializer
from smoothrot.passes.gptq import damping, gptq, inverse_cholesky, undamped_error
from smoothrot.passes.model_map import Linear, build_model_map

__all__ = [
    "Algorithm",
    "GroupingMode",
    "LayerQuantResult",
    "WeightQuantConfig",
    "WeightQuantPass",
    "check_group_sizes",
    "quantize_layer",
]

QUANT_MARK = "smoothrot.weight_quant"
# A Linear whose K²·N exceeds this (multiply-adds of one output-error evaluation: every Linear of
# a 1B+ model, none of SmolLM2's) evaluates its errors and runs GPTQ in float32 GEMMs with the
# fast inverse-Hessian factor; smaller ones keep the float64 reference path.
FAST_WORK = 4e9
# The clip search of a fast Linear measures errors inside runs of this many input channels.
LOCAL_BLOCK = 256


class GroupingMode(enum.Enum):
    PER_OC = "per-oc"
    PER_IC = "per-ic"
    ADADIM = "adadim"  # per layer, the grouping with the smaller calibration output error

    @property
    def candidates(self) -> tuple[Grouping, ...]:
        if self is GroupingMode.ADADIM:
            return (Grouping.PER_OC, Grouping.PER_IC)
        return (Grouping(self.value),)


class Algorithm(enum.Enum):
    RTN = "rtn"
    GPTQ = "gptq"


@dataclass(frozen=True)
class WeightQuantConfig:
    grouping: GroupingMode = GroupingMode.ADADIM
    group_size: int = 128  # 0 = per channel
    algorithm: Algorithm = Algorithm.GPTQ
    lm_head: bool = False  # quantize lm_head too (default: keep it in the compute dtype)
    clip_grid: tuple[float, ...] = DEFAULT_CLIP_GRID
    damp: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.grouping, GroupingMode):
            raise ValueError(f"grouping must be a GroupingMode, got {self.grouping!r}")
        if not isinstance(self.algorithm, Algorithm):
            raise ValueError(f"algorithm must be an Algorithm, got {self.algorithm!r}")
        if self.group_size != 0 and self.group_size < 16:
            raise ValueError(f"group size must be 0 (per channel) or >= 16, got {self.group_size}")
        if not self.clip_grid or any(not 0.0 < c <= 1.0 for c in self.clip_grid):
            raise ValueError(f"clip grid values must be in (0, 1], got {self.clip_grid}")
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"damp must be in (0, 1), got {self.damp}")


@dataclass(frozen=True)
class LayerQuantResult:
    weight: str
    grouping: Grouping
    block: int
    errors: dict[Grouping, float]  # calibration output error tr(ΔBᵀHΔB) per grouping tried
    snr_db: float  # 10·log10(tr(BᵀHB) / error) of the kept grouping


HessianFn = Callable[[Linear], np.ndarray | None]


def check_group_sizes(dims: ModelDims, config: WeightQuantConfig) -> dict[str, dict[str, int]]:
    """The group size each decoder Linear type will use per grouping, before any work is done;
    refuses (naming the layer type and shape) when no valid group size exists."""
    attn, kv = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
    shapes = {
        "q_proj": (dims.hidden, attn),
        "k_proj": (dims.hidden, kv),
        "v_proj": (dims.hidden, kv),
        "o_proj": (attn, dims.hidden),
        "gate_proj": (dims.hidden, dims.intermediate),
        "up_proj": (dims.hidden, dims.intermediate),
        "down_proj": (dims.intermediate, dims.hidden),
    }
    used: dict[str, dict[str, int]] = {}
    for name, (k, n) in shapes.items():
        for grouping in config.grouping.candidates:
            dim = k if grouping is Grouping.PER_OC else n
            try:
                block = fit_group_size(dim, config.group_size)
            except ValueError as exc:
                raise SmoothrotError(
                    f"model.layers.*.{name} [{k}, {n}] {grouping.value}: {exc}"
                ) from exc
            used.setdefault(name, {})[grouping.value] = block
    return used


def quantize_layer(
    b: np.ndarray,
    hessian: np.ndarray | None,
    grouping: Grouping,
    config: WeightQuantConfig,
    factor: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    fast: bool = False,
) -> tuple[QuantizedWeight, float]:
    """One grouping of one layer: fitted group, searched clip, RTN or GPTQ → (weight, error).
    ``factor()`` gives GPTQ's inverse-Hessian factor when the caller caches it. ``fast`` (a
    large Linear): the clip search measures errors on ``H``'s diagonal blocks and GPTQ's error
    is its own running sum, so one Linear costs about one ``K²N`` GEMM per grouping, not 9."""
    k, n = b.shape
    block = fit_group_size(k if grouping is Grouping.PER_OC else n, config.group_size)
    local = math.gcd(k, LOCAL_BLOCK) if fast else 0
    if local < 64:  # K has no run of 64+ channels that tiles it: the full search
        local = 0
    clip = search_clip(b, hessian, grouping, block, config.clip_grid, local)
    if config.algorithm is Algorithm.GPTQ:
        if hessian is None:
            raise SmoothrotError("GPTQ needs calibration Hessians")
        fac = factor() if factor else None
        damped = np.zeros(n, np.float64)
        qw = gptq(b, hessian, grouping, block, clip, config.damp, fac, errors=damped)
        if fast:
            return qw, undamped_error(qw, b, damped, *damping(hessian, config.damp))
    else:
        qw = quantize_rtn(b, grouping, block, clip)
    error = float(output_error(qw.dequantize() - np.asarray(b, np.float64), hessian).sum())
    return qw, error


def _store(graph: ir.Graph, lin: Linear, qw: QuantizedWeight) -> None:
    """Replace ``B`` by INT4 + DequantizeLinear; the DQ output takes over B's name."""
    old = lin.weight
    name = old.name or "weight"
    q = new_initializer(graph, f"{name}.int4", qw.q.astype(ml_dtypes.int4))
    scale = new_initializer(graph, f"{name}.scale", qw.scale)
    dq = ir.node(
        "DequantizeLinear",
        [q, scale],
        attributes={"axis": qw.grouping.axis, "block_size": qw.block},
        name=f"{name}.dequantize",
    )
    dq.metadata_props[QUANT_MARK] = f"int4:{qw.grouping.value}:{qw.block}"
    graph.insert_before(lin.node, dq)
    lin.node.replace_input_with(1, dq.outputs[0])
    if drop_dead_initializers(graph, [old]):
        old.name = f"{name}.float"
    out = dq.outputs[0]
    out.name, out.shape = name, ir.Shape(list(qw.q.shape))
    out.type = ir.TensorType(ir.DataType.FLOAT)


def _cached(cache: dict, key: str, make: Callable[[], object]):  # noqa: ANN202
    if key not in cache:
        cache[key] = make()
    return cache[key]


class WeightQuantPass(ir.passes.InPlacePass):
    """Quantize Linear weights to INT4 QDQ (see module docstring). ``details["layers"]``: a
    :class:`LayerQuantResult` per layer quantized by this call."""

    name = "quantize_weights"

    def __init__(
        self,
        dims: ModelDims,
        hessian: HessianFn,
        config: WeightQuantConfig = WeightQuantConfig(),
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.dims, self.hessian, self.config, self.progress = dims, hessian, config, progress

    def requires(self, model: ir.Model) -> None:
        require_not_lowered(model, self.name)

    def call(self, model: ir.Model) -> PassReport:
        mm = build_model_map(model, self.dims).require()
        targets = [lin for layer in mm.layers for lin in layer.linears()]
        if self.config.lm_head and mm.lm_head is not None:
            targets.append(mm.lm_head)
        todo = [lin for lin in targets if lin.dequantize is None]
        desc = f"quantize ({self.config.algorithm.value})"
        bar = tqdm(todo, desc=desc, unit="layer", disable=not self.progress)
        results: list[LayerQuantResult] = []
        # Linears that read one input (q/k/v, gate/up) share its Hessian (in float64, as the
        # error and GPTQ use it) and GPTQ's factor of it: computed once, not once per use.
        shared: dict[str, tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]] = {}
        for lin in bar:
            b = constant_array(lin.weight)
            if b.dtype != np.float32:
                raise SmoothrotError(f"{lin.name}: INT4 quantization needs fp32 weights, {b.dtype}")
            fast = b.shape[0] ** 2 * b.shape[1] > FAST_WORK
            key = lin.input.name or lin.name
            if key not in shared:
                shared.clear()  # one input at a time: the cache holds at most one Hessian
                raw = self.hessian(lin)
                shared[key] = (None if raw is None else np.asarray(raw), {})
            raw_h, factors = shared[key]
            dtype = np.float32 if fast else np.float64
            if raw_h is not None and f"h{fast}" not in factors:
                factors[f"h{fast}"] = np.asarray(raw_h, dtype)
            h = None if raw_h is None else factors[f"h{fast}"]

            def factor(h=h, factors=factors, fast=fast) -> tuple[np.ndarray, np.ndarray]:
                return _cached(
                    factors, f"u{fast}", lambda: inverse_cholesky(h, self.config.damp, fast)
                )

            tried = {}
            for grouping in self.config.grouping.candidates:
                try:
                    tried[grouping] = quantize_layer(b, h, grouping, self.config, factor, fast)
                except ValueError as exc:
                    raise SmoothrotError(f"{lin.name} {list(b.shape)}: {exc}") from exc
            best = min(tried, key=lambda g: tried[g][1])
            qw, err = tried[best]
            ref = float(output_error(b, h).sum())
            results.append(
                LayerQuantResult(
                    weight=lin.name,
                    grouping=best,
                    block=qw.block,
                    errors={g: e for g, (_, e) in tried.items()},
                    snr_db=10.0 * float(np.log10(ref / err)) if err > 0 else float("inf"),
                )
            )
            _store(model.graph, lin, qw)
        return PassReport(model, bool(todo), {"layers": results})

    def ensures(self, model: ir.Model) -> None:
        ensure_blocked_int4(model, self.name)
