"""What each TensorRT plugin is and how its kernel is launched (plain Python: no TensorRT, Triton).

Three plugins in the namespace ``smoothrot`` (ONNX: op_type = plugin name, domain and
``plugin_namespace`` = ``smoothrot``, ``aot = 1``):

========================  =================================  ==============================
plugin                    inputs → output                    attributes (ints)
========================  =================================  ==============================
``w4a16_gemm``            x [..., K], w int8 [K, N/2],       ``k``, ``n``, ``per_ic``,
                          s fp32 → y [..., N]                ``group_size``
``w4a8_gemm``             the same; x is quantized per       the same
                          token to INT8 inside the kernel
``kron_hadamard``         x [..., m·p], a fp32 [m, m],       ``m``, ``p``
                          b fp32 [p, p] → y [..., m·p]
========================  =================================  ==============================

``x`` and ``y`` are fp16 or fp32 (the same); ``w`` holds INT4 pairs (:mod:`.packing`); ``s`` is
the blocked-DQ scale (per-OC ``[K/g, N]``, per-IC ``[K, N/g]``). Semantics: :mod:`.reference`.

**Baking.** An AOT plugin's attributes are not serialized into the engine: the engine holds only
PTX, launch parameters and symbolic scalar arguments. So every attribute is consumed at *build*
time — ``K``, ``N``, the grouping, the group size and the Hadamard factor sizes become Triton
constexprs of the PTX and constants of the launch grid — and the only run-time quantity is the
number of rows ``M`` (the product of ``x``'s leading dimensions), passed as one ``i32`` argument.
One registered plugin per kind serves every layer shape; each distinct attribute set compiles its
own PTX (:func:`smoothrot.plugins.trt_plugins.register_plugins`).

**Kernel ABI.** TensorRT launches an AOT kernel with ``(input pointers…, extra i32 scalars…,
output pointers…)`` and null for the two scratch pointers Triton appends, so the kernels of
:mod:`.trt_kernels` take exactly that order and must need no scratch memory. The split-K decode
kernel needs a zeroed counter workspace, which an AOT plugin cannot own: the plugin's decode
tactic runs with ``SPLIT_K = 1``. GEMM plugins advertise two tactics (decode, prefill) and
TensorRT times both for each optimization profile.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from smoothrot.core.int4 import Grouping
from smoothrot.plugins.gemm_config import check_tile, decode_config
from smoothrot.plugins.packing import unpack_int4
from smoothrot.plugins.reference import kronecker_hadamard, w4a8_matmul, w4a16_matmul

__all__ = [
    "NAMESPACE",
    "SHARED_LIMIT",
    "ActType",
    "GemmAttrs",
    "HadamardAttrs",
    "LaunchPlan",
    "PluginOp",
    "Tactic",
    "gemm_plan",
    "hadamard_plan",
    "plugin_attributes",
    "plugin_reference",
]

NAMESPACE = "smoothrot"
# Static shared memory a kernel may use without a cuFuncSetAttribute opt-in, which TensorRT's AOT
# launch does not make: plans that exceed it are refused (tests compile every plan and check).
SHARED_LIMIT = 48 * 1024
MAX_FACTOR = 256  # the Hadamard kernel holds X and both factors in one program


class PluginOp(enum.Enum):
    W4A16_GEMM = "w4a16_gemm"
    W4A8_GEMM = "w4a8_gemm"
    KRON_HADAMARD = "kron_hadamard"

    @property
    def plugin_id(self) -> str:
        return f"{NAMESPACE}::{self.value}"

    @property
    def quant_act(self) -> bool:
        return self is PluginOp.W4A8_GEMM


class Tactic(enum.IntEnum):
    DECODE = 1  # one program per (row, N tile): GEMV, weights streamed once per row
    PREFILL = 2  # tl.dot tiles of BLOCK_M rows


class ActType(enum.Enum):
    """Activation type of ``x`` and ``y`` (Triton's spelling)."""

    FP16 = "fp16"
    FP32 = "fp32"


def _pow2_divisor(v: int, cap: int) -> int:
    """Largest power of two <= cap that divides v."""
    d = 1
    while d * 2 <= cap and v % (d * 2) == 0:
        d *= 2
    return d


def _int_attr(attrs: Mapping[str, int], name: str) -> int:
    if name not in attrs:
        raise ValueError(f"plugin attribute {name!r} is missing (have {sorted(attrs)})")
    return int(attrs[name])


@dataclass(frozen=True)
class GemmAttrs:
    """The attributes of a GEMM plugin node; ValueError if no kernel tile fits them."""

    k: int
    n: int
    grouping: Grouping
    group: int

    def __post_init__(self) -> None:
        if not isinstance(self.grouping, Grouping):
            raise ValueError(f"grouping must be a Grouping, got {self.grouping!r}")
        if self.k <= 0 or self.n <= 0:
            raise ValueError(f"K and N must be positive, got K={self.k}, N={self.n}")
        if self.n % 2:
            raise ValueError(f"N must be even (two INT4 values per byte), got N={self.n}")
        along = self.k if self.grouping is Grouping.PER_OC else self.n
        if self.group <= 0 or along % self.group:
            raise ValueError(f"group {self.group} does not divide {self.grouping.value} {along}")
        for tactic in Tactic:
            block_k, block_n = self.tiles(tactic, small=False)[1:]
            try:
                check_tile(self.k, self.n, self.grouping, self.group, block_k, block_n)
            except ValueError as exc:
                raise ValueError(f"{tactic.name.lower()} kernel: {exc}") from None

    def tiles(self, tactic: Tactic, small: bool) -> tuple[int, int, int]:
        """``(BLOCK_M, BLOCK_K, BLOCK_N)`` of ``tactic`` (BLOCK_M 1: one row per program).

        Tiles never straddle a scale group (a smaller power-of-two tile still divides it).
        ``small`` halves the prefill tiles for fp32 activations or fp32 (3-pass TF32) dots:
        their operands take twice the shared memory, and an AOT launch has 48 KiB (the
        full-size tiles compiled for sm_80 need 45–106 KiB there)."""
        if tactic is Tactic.DECODE:
            c = decode_config(1, self.n, self.k, self.grouping, self.group, num_sms=1)
            return 1, c.block_k, max(c.block_n, 2)
        cap_m, cap_k, cap_n = (32, 32, 64) if small else (64, 64, 128)
        per_oc = self.grouping is Grouping.PER_OC
        block_k = _pow2_divisor(self.group, cap_k) if per_oc and self.group < self.k else cap_k
        block_n = cap_n if per_oc or self.group >= self.n else _pow2_divisor(self.group, cap_n)
        return cap_m, max(block_k, 16), max(block_n, 16)

    def onnx_attributes(self) -> dict[str, int]:
        per_ic = int(self.grouping is Grouping.PER_IC)
        return {"k": self.k, "n": self.n, "per_ic": per_ic, "group_size": self.group}

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, int]) -> GemmAttrs:
        per_ic = _int_attr(attrs, "per_ic")
        if per_ic not in (0, 1):
            raise ValueError(f"per_ic must be 0 or 1, got {per_ic}")
        grouping = Grouping.PER_IC if per_ic else Grouping.PER_OC
        k, n = _int_attr(attrs, "k"), _int_attr(attrs, "n")
        return cls(k, n, grouping, _int_attr(attrs, "group_size"))


@dataclass(frozen=True)
class HadamardAttrs:
    """``R = A ⊗ B`` with ``A [m, m]``, ``B [p, p]``."""

    m: int
    p: int

    def __post_init__(self) -> None:
        for name, size in (("m", self.m), ("p", self.p)):
            if not 1 <= size <= MAX_FACTOR:
                raise ValueError(f"factor size {name}={size} must lie in [1, {MAX_FACTOR}]")

    def onnx_attributes(self) -> dict[str, int]:
        return {"m": self.m, "p": self.p}

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, int]) -> HadamardAttrs:
        return cls(_int_attr(attrs, "m"), _int_attr(attrs, "p"))


def _cdiv(a, b: int):
    return (a + b - 1) // b


@dataclass(frozen=True)
class LaunchPlan:
    """One kernel instance and its launch, in TensorRT's argument order.

    ``grid(m)`` and ``extra_args(m)`` take the row count as an int or as a TensorRT symbolic
    expression (then pass ``cdiv=trtp.cdiv``): the same arithmetic serves tests and plugins.
    """

    label: str  # e.g. "w4a8_gemm_prefill_per_ic_k576_n1536_g64_fp16"
    kernel: str  # an entry of smoothrot.plugins.trt_kernels.KERNELS
    inputs: tuple[tuple[str, str], ...]  # (arg name, Triton pointer type), TensorRT order
    outputs: tuple[tuple[str, str], ...]
    scalars: tuple[str, ...]  # i32 extra arguments, between inputs and outputs
    constexprs: tuple[tuple[str, int | bool], ...]
    rows_per_program: int  # grid x covers M rows in programs of this many rows
    tiles_x: int  # N tiles walked along grid x (prefill) ...
    tiles_y: int  # ... or along grid y (decode)
    num_warps: int = 4
    num_stages: int = 3

    def grid(self, m, cdiv: Callable = _cdiv) -> tuple:
        rows = m if self.rows_per_program == 1 else cdiv(m, self.rows_per_program)
        return (rows if self.tiles_x == 1 else rows * self.tiles_x, self.tiles_y, 1)

    def extra_args(self, m) -> tuple:
        return tuple(m for _ in self.scalars)

    @property
    def pointer_types(self) -> dict[str, str]:
        return dict(self.inputs + self.outputs)

    @property
    def block_threads(self) -> int:
        return self.num_warps * 32


def gemm_plan(op: PluginOp, attrs: GemmAttrs, act: ActType, tactic: Tactic) -> LaunchPlan:
    """The kernel instance of a GEMM plugin for one activation type and tactic."""
    if op is PluginOp.KRON_HADAMARD:
        raise ValueError("gemm_plan takes a GEMM plugin")
    per_ic = attrs.grouping is Grouping.PER_IC
    # w4a16: fp32 activations keep fp32 accuracy; w4a8 per-OC sums integers exactly in fp16.
    dot_fp32 = per_ic if op.quant_act else act is ActType.FP32
    block_m, block_k, block_n = attrs.tiles(tactic, dot_fp32 or act is ActType.FP32)
    # Scale strides of a contiguous [K/g, N] (per-OC) or [K, N/g] (per-IC) tensor.
    stride_sk = attrs.n // attrs.group if per_ic else attrs.n
    common = {"N": attrs.n, "K": attrs.k, "GROUP": attrs.group, "STRIDE_SK": stride_sk}
    common |= {"PER_IC": per_ic, "QUANT_ACT": op.quant_act, "BLOCK_K": block_k}
    tiles_n = _cdiv(attrs.n, block_n)
    if tactic is Tactic.DECODE:
        constexprs = common | {"BLOCK_NB": block_n // 2, "ACC_2D": True}
        kernel, tiles_x, tiles_y, stages = "gemm_decode", 1, tiles_n, 2
    else:
        constexprs = common | {"DOT_FP32": dot_fp32, "BLOCK_M": block_m, "BLOCK_N": block_n}
        constexprs |= {"GROUP_M": 8}
        kernel, tiles_x, tiles_y, stages = "gemm_prefill", tiles_n, 1, 2
    tag = "per_ic" if per_ic else "per_oc"
    label = f"{op.value}_{tactic.name.lower()}_{tag}_k{attrs.k}_n{attrs.n}_g{attrs.group}"
    return LaunchPlan(
        label=f"{label}_{act.value}",
        kernel=kernel,
        inputs=(("x_ptr", f"*{act.value}"), ("w_ptr", "*i8"), ("s_ptr", "*fp32")),
        outputs=(("y_ptr", f"*{act.value}"),),
        scalars=("M",),
        constexprs=tuple(constexprs.items()),
        rows_per_program=block_m,
        tiles_x=tiles_x,
        tiles_y=tiles_y,
        num_stages=stages,
    )


def _pow2_at_least_16(size: int) -> int:
    p = 16
    while p < size:
        p *= 2
    return p


def hadamard_plan(attrs: HadamardAttrs, act: ActType) -> LaunchPlan:
    """The Hadamard kernel instance: one program per token, no scalar arguments."""
    m, p = attrs.m, attrs.p
    n = m * p
    constexprs = {"m": m, "p": p, "stride_xt": n, "stride_yt": n}
    constexprs |= {"M_PAD": _pow2_at_least_16(m), "P_PAD": _pow2_at_least_16(p)}
    return LaunchPlan(
        label=f"kron_hadamard_{m}x{p}_{act.value}",
        kernel="hadamard",
        inputs=(("x_ptr", f"*{act.value}"), ("a_ptr", "*fp32"), ("b_ptr", "*fp32")),
        outputs=(("y_ptr", f"*{act.value}"),),
        scalars=(),
        constexprs=tuple(constexprs.items()),
        rows_per_program=1,
        tiles_x=1,
        tiles_y=1,
        num_warps=8 if max(m, p) > 64 else 4,
    )


def plugin_attributes(node: ir.Node) -> tuple[PluginOp, GemmAttrs | HadamardAttrs]:
    """The plugin of a plugin node (``LowerToTrtPluginsPass`` writes them) and its attributes;
    ValueError if ``node`` is not one."""
    if node.domain != NAMESPACE:
        raise ValueError(f"{node.name!r} is not a {NAMESPACE} plugin node")
    op = PluginOp(node.op_type)
    ints = {name: a.as_int() for name, a in node.attributes.items() if a.type.name == "INT"}
    if op is PluginOp.KRON_HADAMARD:
        return op, HadamardAttrs.from_attributes(ints)
    return op, GemmAttrs.from_attributes(ints)


def plugin_reference(node: ir.Node, x: np.ndarray) -> np.ndarray:
    """numpy (float32) output of a plugin node for input ``x``: what the kernel must compute."""
    op, attrs = plugin_attributes(node)
    constants = [v.const_value.numpy() for v in node.inputs[1:]]  # type: ignore[union-attr]
    if isinstance(attrs, HadamardAttrs):
        return kronecker_hadamard(x, constants[0], constants[1])
    fn = w4a8_matmul if op is PluginOp.W4A8_GEMM else w4a16_matmul
    return fn(x, unpack_int4(constants[0]), constants[1], attrs.grouping, attrs.group)
