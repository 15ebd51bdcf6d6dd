"""Every option is checked before any slow work, in one line that names the flag: the opset
range the exporter really writes, engine profiles that fit together, --dump-after step names
(taken from compiler/pipelines.py), the --kv-prefix range and recipe, an empty --prompt and a
--text that is a directory. Most run on model paths that do not exist: the option is refused
before anything is loaded."""

from __future__ import annotations

import types

import numpy as np
import onnx_ir as ir
import pytest

from smoothrot.compiler.config import (
    MAX_OPSET,
    MIN_OPSET,
    CompileConfig,
    EngineConfig,
    Recipe,
    TuneConfig,
)
from smoothrot.compiler.pipelines import compile_pipeline, compile_step_names
from smoothrot.core.manifest import load_manifest
from smoothrot.tools.cli import main
from tests.reliability.test_cli_boundary import one_line


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    """The tiny Llama's HF directory (made before any test captures its output)."""
    return str(tiny_model_dir("llama"))


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export("llama")


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, MAX_OPSET + 1, 29, 99])
def test_an_opset_the_exporter_cannot_write_is_refused(capsys, hf, tmp_path, opset):
    argv = ["export", "--model", hf, "-o", str(tmp_path / "o")]
    line = one_line(capsys, [*argv, "--opset", str(opset)])
    assert f"--opset must be in {MIN_OPSET}..{MAX_OPSET}" in line and f"got {opset}" in line
    assert not (tmp_path / "o").exists()


def test_export_refuses_a_graph_of_another_opset(capsys, monkeypatch, hf, tmp_path):
    """Where the exporter falls back to another opset, nothing is written under a wrong label."""
    import torch

    graph = ir.Graph([], [], nodes=[], opset_imports={"": 18})
    fallback = types.SimpleNamespace(model=ir.Model(graph, ir_version=10))
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: fallback)
    line = one_line(capsys, ["export", "--model", hf, "-o", str(tmp_path / "o")])
    assert f"--opset {MIN_OPSET}: the torch exporter wrote opset 18 instead" in line
    assert not (tmp_path / "o").exists()


def test_the_newest_opset_is_written_as_asked_and_runs(capsys, hf, tmp_path):
    from smoothrot.compiler.runtime.ort_runner import OrtDecoder

    out = tmp_path / "o"
    assert main(["export", "--model", hf, "-o", str(out), "--opset", str(MAX_OPSET)]) == 0
    assert f"opset {MAX_OPSET}" in capsys.readouterr().out
    assert load_manifest(out).opset == MAX_OPSET
    assert ir.load(str(out / "model.onnx")).opset_imports[""] == MAX_OPSET
    logits, _ = OrtDecoder(out).forward(np.array([[1, 2, 3]]))
    assert logits.shape[:2] == (1, 3) and np.isfinite(logits).all()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--max-prompt", "0"], "--max-prompt must be >= 1, got 0"),
        (["--max-context", "10", "--max-prompt", "512"], "--max-context (10) must exceed"),
        (["--max-context", "512", "--max-prompt", "512"], "--max-prompt (512)"),
        (["--opt-prompt", "600"], "--opt-prompt must be in 1..512 (--max-prompt), got 600"),
        (["--opt-context", "1"], "--opt-context must be in 2..2048 (--max-context), got 1"),
    ],
)
def test_engine_profiles_must_fit_together(capsys, tmp_path, flags, says):
    line = one_line(capsys, ["build", str(tmp_path / "none"), "-o", str(tmp_path / "o"), *flags])
    assert says in line and "EngineConfig(" not in line, line


def test_the_smallest_consistent_profiles_are_accepted():
    engine = EngineConfig(max_prompt=1, max_context=2)
    assert (engine.opt_prompt, engine.opt_context) == (1, 2)


def _compile(tmp_path, *flags):
    """compile argv whose model does not exist: an option error must come first."""
    return ["compile", "--model", str(tmp_path / "none"), "-o", str(tmp_path / "o"), *flags]


def test_dump_after_names_a_step_of_this_compile(capsys, tmp_path):
    steps = compile_step_names(CompileConfig(Recipe.W4A16))
    for name in ("nope", "smooth"):  # unknown; a step of other recipes, not of w4a16
        line = one_line(capsys, _compile(tmp_path, "--recipe", "w4a16", "--dump-after", name))
        assert f"--dump-after {name}: a compile of w4a16" in line
        assert line.endswith(f"its steps: {', '.join(steps)}")
    assert CompileConfig(Recipe.W4A4, dump_after=("smooth", "calibrate_hessians")).dump_after


@pytest.mark.parametrize(
    "config",
    [CompileConfig(r) for r in Recipe] + [CompileConfig(Recipe.W4A8, tune=TuneConfig())],
    ids=lambda c: c.recipe.value + ("-tune" if c.tune else ""),
)
def test_step_names_are_the_pipelines_own(export, tmp_path, config):
    """With an empty statistics store a compile runs exactly the steps --dump-after accepts."""
    manifest = load_manifest(export)
    pipeline = compile_pipeline(config, manifest, export, tmp_path / "s", tmp_path / "w")
    assert pipeline.names == compile_step_names(config)


def test_kv_prefix_range_and_recipe(capsys, tmp_path):
    line = one_line(capsys, _compile(tmp_path, "--recipe", "w4a16", "--kv-prefix", "4"))
    assert "--kv-prefix needs a recipe that quantizes the KV cache (w4a4kv4)" in line
    for value in ("-1", str(2**63)):
        line = one_line(capsys, _compile(tmp_path, "--recipe", "w4a4kv4", "--kv-prefix", value))
        assert f"--kv-prefix must be in [0, 2^63), got {value}" in line
        line = one_line(capsys, ["eval", str(tmp_path / "none"), "--kv-prefix", value])
        assert f"--kv-prefix must be in [0, 2^63), got {value}" in line
    assert CompileConfig(Recipe.W4A4KV4, kv_prefix=2**63 - 1).kv_prefix == 2**63 - 1


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_an_empty_prompt_is_refused_before_the_model_loads(capsys, export, tmp_path, prompt):
    for model in (tmp_path / "none", export):
        line = one_line(capsys, ["generate", str(model), "--prompt", prompt])
        assert line == "smoothrot: error: --prompt is empty; give the text to continue"


def test_a_text_that_is_a_directory(capsys, export, tmp_path):
    model, out = str(export), tmp_path / "cal"
    for argv in (["eval", model], ["calibrate", model, "--tokens", "64", "--seq", "32", "-o", out]):
        line = one_line(capsys, [*map(str, argv), "--text", str(tmp_path)])
        assert line.endswith(f"text file {tmp_path} is a directory, not a text file"), line
    assert not out.exists()
