"""The exact recipes on the real default model: logits within 1e-3, perplexity to 3 decimals."""

import pytest

from smoothrot.compiler.compile import compile_model
from smoothrot.compiler.config import CompileConfig, EvalConfig
from smoothrot.compiler.measure.evaluate import evaluate_dir
from smoothrot.compiler.recipes import Recipe


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in Recipe if r.exact])
def test_recipes_are_exact_on_the_default_model(default_export, tmp_path, recipe):
    out = tmp_path / recipe.value
    report = compile_model(out, CompileConfig(recipe=recipe), onnx_dir=default_export)
    assert report["exactness"]["max_abs_logit_diff"] <= 1e-3
    if recipe is Recipe.FP_HYBRID:  # perplexity identical to 3 decimals
        ref = evaluate_dir(default_export, EvalConfig(), progress=False)["ppl"]
        ours = evaluate_dir(out, EvalConfig(), progress=False)["ppl"]
        assert round(ours, 3) == round(ref, 3)
