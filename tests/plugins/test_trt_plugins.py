"""TensorRT plugin registration without TensorRT: clear errors when it is missing or too old, and
the registration glue checked against a recording stand-in of ``tensorrt.plugin``.

The stand-in implements only the calls the TensorRT >= 10.9 documentation and samples show
(``register`` / ``autotune`` / ``aot_impl`` decorators, ``KernelLaunchParams``, ``SymIntExprs``,
``SymInt32``, ``cdiv``, ``from_shape_expr``, ``AutoTuneCombination``) and fails on duplicate
registrations as TensorRT does. It checks that attributes, tactics, shapes and launches reach the
plan they should; that the real API accepts them is what ``smoothrot doctor --trt`` checks on a
machine with TensorRT and a GPU.
"""

import sys
import types

import pytest

from smoothrot.core.errors import SmoothrotError
from smoothrot.core.int4 import Grouping
from smoothrot.plugins import trt_plugins
from smoothrot.plugins.ptx import PtxKernel
from smoothrot.plugins.trt_spec import (
    ActType,
    GemmAttrs,
    HadamardAttrs,
    PluginOp,
    Tactic,
    gemm_plan,
    hadamard_plan,
)


class Sym:
    def __init__(self, text):
        self.text = text

    def __mul__(self, other):
        return Sym(f"({self.text} * {getattr(other, 'text', other)})")


class Desc:
    def __init__(self, dims, dtype):
        self.shape_expr, self.ndim, self.dtype = list(dims), len(dims), dtype

    def like(self):
        return ("like", self)


def _fake_tensorrt(version: str = "10.9.0.34") -> tuple[types.ModuleType, types.ModuleType]:
    trtp = types.ModuleType("tensorrt.plugin")
    trtp.registered = {}

    def decorator(kind):
        def by_id(plugin_id):
            def record(fn):
                if (kind, plugin_id) in trtp.registered:
                    raise ValueError(f"{plugin_id} already has a {kind}")
                trtp.registered[kind, plugin_id] = fn
                return fn

            return record

        return by_id

    trtp.register, trtp.autotune, trtp.aot_impl = (
        decorator(k) for k in ("register", "tune", "aot")
    )
    trtp.TensorDesc = Desc
    trtp.KernelLaunchParams = types.SimpleNamespace
    trtp.SymInt32 = lambda value: ("SymInt32", value)
    trtp.SymIntExprs = lambda n: [None] * n
    trtp.cdiv = lambda a, b: Sym(f"cdiv({a.text}, {b})")
    trtp.from_shape_expr = lambda dims, dtype: ("shape", tuple(dims), dtype)
    trtp.AutoTuneCombination = lambda types_, layouts, tactics: (types_, layouts, tactics)
    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.Builder, trt.plugin = version, object, trtp
    trt.float16, trt.float32, trt.int8 = "half", "float", "int8"
    return trt, trtp


@pytest.fixture
def fake_trt(monkeypatch):
    """The stand-in installed, a fresh registry, and PTX compilation recorded instead of run."""
    trt, trtp = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(trt_plugins, "_registered", set())
    compiled = []

    def fake_compile(plan, arch):
        compiled.append((plan, arch))
        return PtxKernel(plan.label, f"{plan.kernel}_entry", arch, ".entry ...", 4, 1234)

    monkeypatch.setattr(trt_plugins, "_compiled", fake_compile)
    return trt, trtp, compiled


def test_missing_tensorrt_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(SmoothrotError, match=r"TensorRT is not importable: .*TensorRT >= 10\.9"):
        trt_plugins.register_plugins(arch=80)


def test_tensorrt_without_plugin_api_is_refused(monkeypatch):
    trt, _ = _fake_tensorrt("10.8.0.43")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(SmoothrotError, match=r"TensorRT 10\.8\.0\.43 has no AOT Python plugins"):
        trt_plugins.plugin_api()
    assert trt_plugins.trt_version(trt) == (10, 8, 0, 43)


def test_gemm_plugin_glue(fake_trt):
    trt, trtp, compiled = fake_trt
    ids = trt_plugins.register_plugins(arch=80)
    assert ids == tuple(op.plugin_id for op in PluginOp)
    assert trt_plugins.register_plugins(arch=80) == ids  # once per process: no re-registration
    plugin = PluginOp.W4A8_GEMM.plugin_id
    attrs = {"k": 576, "n": 1536, "per_ic": 1, "group_size": 64}
    x = Desc([Sym("B"), Sym("S"), 576], trt.float16)
    shape = trtp.registered["register", plugin](x, None, None, **attrs)
    assert shape[0] == "shape" and shape[1][2] == 1536 and shape[2] == trt.float16
    with pytest.raises(ValueError, match="rank >= 2"):
        trtp.registered["register", plugin](Desc([576], trt.float16), None, None, **attrs)
    combos = trtp.registered["tune", plugin](x, None, None, None)
    assert [c[0] for c in combos] == ["FP16, INT8, FP32, FP16", "FP32, INT8, FP32, FP32"]
    assert all(c[2] == [1, 2] for c in combos)

    name, ptx, launch, extra = trtp.registered["aot", plugin](
        x, None, None, **attrs, outputs=None, tactic=2
    )
    expected = gemm_plan(
        PluginOp.W4A8_GEMM, GemmAttrs(576, 1536, Grouping.PER_IC, 64), ActType.FP16, Tactic.PREFILL
    )
    assert compiled == [(expected, 80)]
    assert (name, ptx) == (b"gemm_prefill_entry", b".entry ...")
    assert (
        launch.grid_x.text == f"(cdiv((B * S), {expected.rows_per_program}) * {expected.tiles_x})"
    )
    assert (launch.grid_y, launch.grid_z, launch.block_x, launch.shared_mem) == (1, 1, 128, 1234)
    assert [(kind, v.text) for kind, v in extra] == [("SymInt32", "(B * S)")]

    x32 = Desc([Sym("B"), Sym("S"), 576], trt.float32)
    trtp.registered["aot", plugin](x32, None, None, **attrs, outputs=None, tactic=1)
    assert compiled[-1][0].label.endswith("decode_per_ic_k576_n1536_g64_fp32")
    with pytest.raises(ValueError, match="fp16 or fp32"):
        trtp.registered["aot", plugin](
            Desc([Sym("S"), 576], trt.int8), None, None, **attrs, outputs=None, tactic=1
        )


def test_hadamard_plugin_glue(fake_trt):
    trt, trtp, compiled = fake_trt
    trt_plugins.register_plugins(arch=90)
    plugin = PluginOp.KRON_HADAMARD.plugin_id
    x = Desc([Sym("B"), Sym("S"), 576], trt.float16)
    assert trtp.registered["register", plugin](x, None, None, m=9, p=64) == ("like", x)
    with pytest.raises(ValueError, match="must lie in"):
        trtp.registered["register", plugin](x, None, None, m=9, p=0)
    combos = trtp.registered["tune", plugin](x, None, None, None)
    assert [c[0] for c in combos] == ["FP16, FP32, FP32, FP16", "FP32, FP32, FP32, FP32"]
    name, _, launch, extra = trtp.registered["aot", plugin](x, None, None, m=9, p=64, outputs=None)
    assert compiled == [(hadamard_plan(HadamardAttrs(9, 64), ActType.FP16), 90)]
    assert name == b"hadamard_entry" and launch.grid_x.text == "(B * S)" and extra == []
