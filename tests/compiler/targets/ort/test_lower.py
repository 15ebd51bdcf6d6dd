"""``lower_model``: one level-0 lowering proves exactness, the shipped model is the same weights
at the requested accuracy level, scratch never reaches the output, and a model that cannot fit
is refused before any work."""

import onnx
import pytest

from smoothrot.compiler.config import LowerConfig, Recipe
from smoothrot.compiler.targets.ort.lower import lower_model
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import MODEL_FILE
from smoothrot.passes.lower_ort import KERNEL_OPS
from smoothrot.passes.quantize_weights import GroupingMode
from tests.helpers import compile_rtn


@pytest.fixture(scope="module")
def qdq(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("lower") / "qdq"
    return compile_rtn(tiny_export("llama"), out, Recipe.W4A16, GroupingMode.ADADIM, tokens=512)


def _levels(directory) -> dict[str, set[int]]:
    """Each INT4 kernel op type of ``directory``'s graph with the accuracy levels it carries."""
    proto = onnx.load(str(directory / MODEL_FILE), load_external_data=False)
    levels: dict[str, set[int]] = {}
    for node in proto.graph.node:
        if node.op_type in KERNEL_OPS:
            level = [a.i for a in node.attribute if a.name == "accuracy_level"]
            levels.setdefault(node.op_type, set()).update(level or {-1})
    return levels


@pytest.mark.parametrize("level", [0, 4])
def test_shipped_model_carries_the_requested_level_and_level0_is_exact(qdq, tmp_path, level):
    out = tmp_path / "low"
    report = lower_model(qdq, out, LowerConfig(accuracy_level=level, evaluate=False))
    levels = _levels(out)
    assert levels and all(found == {level} for found in levels.values()), levels
    assert report["exactness_level0"]["max_abs_logit_diff"] < 1e-4
    shipped = report["shipped_vs_qdq"]["max_abs_logit_diff"]
    assert shipped < 1e-4 if level == 0 else shipped > 0  # level 4 quantizes activations
    names = sorted(p.name for p in out.iterdir())
    assert f"{MODEL_FILE}.data" in names and "level0" not in names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["low"]  # no staging or scratch left


def test_a_lowering_that_cannot_fit_is_refused_up_front(qdq, tmp_path, monkeypatch):
    from smoothrot.compiler.stream import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    with pytest.raises(SmoothrotError, match=r"lowering .* needs ~\d+\.\d GB .* 0\.0 GB available"):
        lower_model(qdq, tmp_path / "low")
    assert not list(tmp_path.iterdir())
