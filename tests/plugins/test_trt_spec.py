"""Plugin specs: attribute validation, tiles inside scale groups, launch arithmetic that also works
on TensorRT's symbolic expressions."""

import pytest

from smoothrot.core.int4 import Grouping
from smoothrot.plugins.gemm_config import check_tile
from smoothrot.plugins.trt_spec import (
    NAMESPACE,
    ActType,
    GemmAttrs,
    HadamardAttrs,
    PluginOp,
    Tactic,
    gemm_plan,
    hadamard_plan,
)

PER_OC, PER_IC = Grouping.PER_OC, Grouping.PER_IC


def test_plugin_ids():
    assert NAMESPACE == "smoothrot"
    assert [op.plugin_id for op in PluginOp] == [
        "smoothrot::w4a16_gemm",
        "smoothrot::w4a8_gemm",
        "smoothrot::kron_hadamard",
    ]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((64, 33, PER_OC, 32), "N must be even"),
        ((64, 32, PER_OC, 24), "does not divide per-oc 64"),
        ((64, 32, PER_IC, 0), "does not divide per-ic 32"),
        ((0, 32, PER_OC, 32), "must be positive"),
        ((64, 32, PER_OC, 8), "prefill kernel: per-OC group 8 is not a multiple of block_k 16"),
        ((64, 96, PER_IC, 24), "prefill kernel: per-IC group 24 is not a multiple of block_n 16"),
        ((64, 32, "per-oc", 32), "must be a Grouping"),
    ],
)
def test_gemm_attrs_refuse_what_no_kernel_computes(args, match):
    with pytest.raises(ValueError, match=match):
        GemmAttrs(*args)


@pytest.mark.parametrize("group", [16, 32, 48, 64, 128, 192, 1536])
@pytest.mark.parametrize("grouping", list(Grouping))
def test_every_tile_lies_in_one_scale_group(grouping, group):
    attrs = GemmAttrs(1536, 1536, grouping, group)
    for tactic in Tactic:
        for small in (False, True):
            _, block_k, block_n = attrs.tiles(tactic, small)
            check_tile(1536, 1536, grouping, group, block_k, block_n)  # raises if one straddles


def test_attributes_round_trip_and_missing_ones_are_named():
    attrs = GemmAttrs(576, 1536, PER_IC, 64)
    onnx = attrs.onnx_attributes()
    assert onnx == {"k": 576, "n": 1536, "per_ic": 1, "group_size": 64}
    assert GemmAttrs.from_attributes(onnx) == attrs
    with pytest.raises(ValueError, match="'group_size' is missing"):
        GemmAttrs.from_attributes({"k": 576, "n": 1536, "per_ic": 0})
    with pytest.raises(ValueError, match="per_ic must be 0 or 1"):
        GemmAttrs.from_attributes(onnx | {"per_ic": 2})
    assert HadamardAttrs.from_attributes({"m": 9, "p": 64}) == HadamardAttrs(9, 64)
    with pytest.raises(ValueError, match=r"p=512 must lie in \[1, 256\]"):
        HadamardAttrs(9, 512)


class Sym:
    """A stand-in for TensorRT's symbolic row count: supports only what ShapeExpr supports, and
    fails if the plan tries to turn it into an int."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __mul__(self, other):
        return Sym(f"({self.text} * {other})")

    def __int__(self):
        raise AssertionError("launch arithmetic must stay symbolic")

    __index__ = __int__


def _cdiv(a, b):
    return Sym(f"cdiv({a.text}, {b})")


def test_launch_arithmetic_stays_symbolic():
    attrs = GemmAttrs(576, 1536, PER_OC, 64)
    decode = gemm_plan(PluginOp.W4A8_GEMM, attrs, ActType.FP16, Tactic.DECODE)
    grid = decode.grid(Sym("M"), cdiv=_cdiv)
    assert (grid[0].text, grid[1:]) == ("M", (1536 // 128, 1))
    prefill = gemm_plan(PluginOp.W4A8_GEMM, attrs, ActType.FP16, Tactic.PREFILL)
    grid = prefill.grid(Sym("M"), cdiv=_cdiv)
    assert (grid[0].text, grid[1:]) == (f"(cdiv(M, 64) * {1536 // 128})", (1, 1))
    assert [e.text for e in prefill.extra_args(Sym("M"))] == ["M"]
    assert prefill.block_threads == 128
    rotation = hadamard_plan(HadamardAttrs(9, 64), ActType.FP32)
    assert rotation.grid(Sym("M"), cdiv=_cdiv)[0].text == "M"
    assert rotation.extra_args(Sym("M")) == ()


def test_plans_bake_shapes_and_types():
    attrs = GemmAttrs(576, 1536, PER_IC, 64)
    plan = gemm_plan(PluginOp.W4A16_GEMM, attrs, ActType.FP32, Tactic.PREFILL)
    c = dict(plan.constexprs)
    assert (c["K"], c["N"], c["GROUP"], c["STRIDE_SK"], c["PER_IC"]) == (576, 1536, 64, 24, True)
    assert c["DOT_FP32"] and not c["QUANT_ACT"] and c["BLOCK_M"] == 32  # fp32: half tiles
    assert plan.pointer_types == {
        "x_ptr": "*fp32",
        "w_ptr": "*i8",
        "s_ptr": "*fp32",
        "y_ptr": "*fp32",
    }
    assert plan.scalars == ("M",)
    w4a8 = gemm_plan(
        PluginOp.W4A8_GEMM, GemmAttrs(576, 1536, PER_OC, 64), ActType.FP16, Tactic.PREFILL
    )
    c = dict(w4a8.constexprs)
    assert c["QUANT_ACT"] and not c["DOT_FP32"] and c["STRIDE_SK"] == 1536 and c["BLOCK_M"] == 64
    with pytest.raises(ValueError, match="GEMM plugin"):
        gemm_plan(PluginOp.KRON_HADAMARD, attrs, ActType.FP16, Tactic.DECODE)
    labels = {
        gemm_plan(op, attrs, act, t).label
        for op in (PluginOp.W4A16_GEMM, PluginOp.W4A8_GEMM)
        for act in ActType
        for t in Tactic
    }
    assert len(labels) == 8  # every instance compiles to its own PTX
