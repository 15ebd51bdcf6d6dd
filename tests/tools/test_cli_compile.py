"""`smoothrot compile` with quantized recipes on a tiny model: outputs, report, and bad input."""

import json

import numpy as np
import pytest

from smoothrot.compiler.config import EvalConfig
from smoothrot.compiler.measure.perplexity import perplexity
from smoothrot.compiler.runtime.ort_runner import OrtDecoder
from smoothrot.tools.cli import main
from tests.tools.test_cli import _fails_cleanly


def test_w4a4kv4_compile_writes_model_report_and_runs(capsys, tmp_path, tiny_export):
    out = tmp_path / "q"
    argv = ["compile", "--onnx", str(tiny_export("llama")), "--recipe", "w4a4kv4", "-o", str(out)]
    argv += ["--group-size", "32", "--kv-prefix", "4", "--calibration-tokens", "1024"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "report.md" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["transform"] == "hybrid-online" and report["config"]["kv_prefix"] == 4
    assert len(report["layers"]) == 14  # 2 layers x 7 Linears; lm_head kept fp32
    assert sum(report["grouping_counts"].values()) == 14
    assert all(np.isfinite(lay["snr_db"]) for lay in report["layers"])
    assert report["perplexity"]["after"] > 1 and report["size_bytes"]["output"] > 0
    assert {"report.md", "report_layers.png", "model.onnx", "smoothrot.json"} <= {
        p.name for p in out.iterdir()
    }
    names = [s["stage"] for s in report["stages"]]
    assert names[-3:] == ["quantize_weights", "quantize_activations", "quantize_kv"]
    assert main(["eval", str(out), "--seq", "32", "--windows", "2"]) == 0
    assert main(["generate", str(out), "--prompt", "Hi", "--max-new-tokens", "3"]) == 0


def test_compile_bad_input_leaves_nothing(capsys, tmp_path, tiny_export):
    model = str(tiny_export("llama"))
    base = ["compile", "--onnx", model, "--recipe", "w4a16", "-o", str(tmp_path / "o")]
    _fails_cleanly(capsys, base + ["--group-size", "8"], "group size")
    # 48 -> 24 -> 12: nothing >= 16 divides the tiny model's 64 input channels; the layer is named
    _fails_cleanly(capsys, base + ["--group-size", "48", "--grouping", "per-oc"], "q_proj [64, 64]")
    _fails_cleanly(capsys, base + ["--calibration-tokens", "100"], "calibration tokens")
    _fails_cleanly(capsys, base + ["--kv-prefix", "-1"], "--kv-prefix must be in [0, 2^63)")
    _fails_cleanly(capsys, base + ["--calibration-tokens", "9000000"], "calibration text too short")
    assert main(["compile", "--onnx", model, "--recipe", "w3a3", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'w3a3'" in err[0], err
    assert not (tmp_path / "o").exists()


def test_perplexity_with_a_prefix_scores_the_same_tokens():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=64).tolist()
    seen = []

    def logits(x):
        seen.append(x.shape[1])
        return np.zeros((1, x.shape[1], 50))  # uniform: perplexity is exactly the vocab size

    cfg = EvalConfig(seq=16, windows=4)
    plain = perplexity(logits, ids, cfg, progress=False)
    prefixed = perplexity(logits, ids, cfg, progress=False, prefix_ids=[1, 2, 3])
    assert plain.tokens == prefixed.tokens == 4 * 15
    assert seen == [16] * 4 + [19] * 4
    assert abs(prefixed.ppl - 50) < 1e-9


def test_runtime_kv_prefix_needs_a_quantized_cache(tiny_export):
    with pytest.raises(ValueError, match="no quantized KV cache"):
        OrtDecoder(tiny_export("llama"), kv_prefix=3)
