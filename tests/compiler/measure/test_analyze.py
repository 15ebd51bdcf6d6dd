"""`smoothrot analyze`: the pure math on random data, and an end-to-end run on a tiny Llama."""

import csv
import json
import math

import numpy as np
import pytest

from smoothrot.compiler.calibrate.statistics import calibrate_dir, load_calibration
from smoothrot.compiler.config import AnalyzeConfig, CalibrationConfig
from smoothrot.compiler.measure import analyze
from smoothrot.compiler.measure.analyze import (
    Transform,
    analyze_dir,
    analyze_model,
    channel_magnitudes,
    difficulty,
    error_estimate,
    group_scales,
    module_kind,
    output_error,
    quantize_per_channel,
    quantize_per_token,
    transform_pair,
)
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.hadamard import rotation_factors
from smoothrot.passes.smooth import smoothing_scales
from smoothrot.tools.cli import main

_FILES = {
    "analysis.csv",
    "analysis.json",
    "summary.md",
    "difficulty_activation.png",
    "difficulty_weight.png",
    "error.png",
}


def _pair(t: int = 128, k: int = 48, n: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, k)) * rng.uniform(0.1, 3.0, k)  # uneven channels
    return x, rng.standard_normal((k, n))


def _quantized_error(x, b, transform, s, r, bits=4):
    xp, bp = transform_pair(x, b, transform, s, r)
    qx, da = quantize_per_token(xp, bits)
    qb, dw = quantize_per_channel(bp, bits)
    err, ref2 = output_error(x, b, qx, qb)
    return xp, bp, err / ref2, error_estimate(xp, bp, da, dw) / ref2


def test_transforms_keep_the_product_and_change_the_operands():
    x, b = _pair()
    b2 = np.random.default_rng(1).standard_normal((48, 7))
    s = group_scales(np.abs(x).max(0), [b, b2], alpha=0.5)
    r = rotation_factors(48).dense
    for t in Transform:
        xp, bp = transform_pair(x, b, t, s, r)
        np.testing.assert_allclose(xp @ bp, x @ b, rtol=1e-10, atol=1e-10)
        assert (t is Transform.NONE) == np.array_equal(xp, x)
    xp, bp = transform_pair(x, b, Transform.SMOOTH_ROTATE, s, r)
    np.testing.assert_allclose(xp, (x / s) @ r, rtol=1e-12)  # smoothing first, rotation second
    np.testing.assert_allclose(bp, r.T @ (s[:, None] * b), rtol=1e-12)


def test_group_scales_use_all_readers_and_tie_gqa_heads():
    x, b = _pair(k=24)
    b2 = 5 * np.random.default_rng(2).standard_normal((24, 3))
    a = np.abs(x).max(0)
    w = np.maximum(np.abs(b).max(1), np.abs(b2).max(1))
    np.testing.assert_allclose(group_scales(a, [b, b2], 0.5), np.sqrt(a / w))
    tied = group_scales(a, [b], 0.5, tie=(2, 3, 4)).reshape(2, 3, 4)  # 2 KV heads x 3 queries
    assert np.all(tied == tied[:, :1, :])
    expect = smoothing_scales(
        a.reshape(2, 3, 4).max(1), np.abs(b).max(1).reshape(2, 3, 4).max(1), 0.5
    )
    np.testing.assert_allclose(tied[:, 0, :], expect)


def test_quantizer_symmetric_on_grid_and_exact_on_grid_data():
    x, b = _pair()
    qx, step = quantize_per_token(x)
    np.testing.assert_allclose(step, np.abs(x).max(1) / 7)
    codes = qx / step[:, None]
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-9)
    codes = np.round(codes)
    assert codes.min() >= -8 and codes.max() <= 7
    assert np.all(np.abs(codes).max(1) == 7)
    np.testing.assert_array_equal(quantize_per_token(-x)[0], -qx)
    assert np.all(np.abs(qx - x) <= step[:, None] / 2 + 1e-12)  # round to nearest
    qb, wstep = quantize_per_channel(b)
    assert wstep.shape == (b.shape[1],)
    np.testing.assert_allclose(wstep, np.abs(b).max(0) / 7)
    np.testing.assert_array_equal(quantize_per_channel(-b)[0], -qb)
    # Data already on the grid (each slice reaching ±7 steps) comes back unchanged, so the layer
    # error is 0; an all-zero token has step 0 and stays 0.
    rng = np.random.default_rng(3)
    xg = rng.integers(-7, 8, (16, 32)).astype(np.float64)
    xg[:, 0] = -7
    xg *= 2.0 ** rng.integers(-4, 4, (16, 1))
    xg[5] = 0.0
    bg = rng.integers(-7, 8, (32, 6)).astype(np.float64)
    bg[3] = 7
    bg *= 2.0 ** rng.integers(-4, 4, (1, 6))
    (qxg, st), (qbg, _) = quantize_per_token(xg), quantize_per_channel(bg)
    np.testing.assert_array_equal(qxg, xg)
    np.testing.assert_array_equal(qbg, bg)
    assert st[5] == 0
    assert output_error(xg, bg, qxg, qbg)[0] == 0.0


def test_quantizer_bits_and_output_error_blocks(monkeypatch):
    x, b = _pair(t=50, n=16)
    q3, step3 = quantize_per_token(x, bits=3)
    np.testing.assert_allclose(step3, np.abs(x).max(1) / 3)
    assert set(np.unique(np.round(q3 / step3[:, None]))) <= set(range(-4, 4))
    qb, _ = quantize_per_channel(b)
    direct = (((x @ b) - q3 @ qb) ** 2).sum(), ((x @ b) ** 2).sum()
    monkeypatch.setattr(analyze, "_BLOCK_BYTES", 4 * 16 * 7)  # 7 tokens per block
    np.testing.assert_allclose(output_error(x, b, q3, qb), direct, rtol=1e-12)


def test_difficulty_is_std_of_channel_l2():
    x, b = _pair()
    np.testing.assert_allclose(channel_magnitudes(x, axis=0), np.linalg.norm(x, axis=0))
    np.testing.assert_allclose(channel_magnitudes(b, axis=1), np.linalg.norm(b, axis=1))
    assert difficulty(np.array([1.0, 3.0])) == pytest.approx(1.0)


def test_estimate_matches_measured_error_on_gaussian_data():
    rng = np.random.default_rng(4)
    x, b = rng.standard_normal((512, 256)), rng.standard_normal((256, 128))
    _, _, rel, est = _quantized_error(x, b, Transform.NONE, np.ones(256), np.eye(256))
    assert 0.5 < est / rel < 2.0
    assert 1e-3 < rel < 0.1  # 4-bit on Gaussian data: a few percent


def test_rotation_tames_one_outlier_channel():
    rng = np.random.default_rng(5)
    x, b = rng.standard_normal((256, 64)), rng.standard_normal((64, 32))
    x[:, 3] *= 50
    s, r = group_scales(np.abs(x).max(0), [b], 0.5), rotation_factors(64).dense
    x0, _, rel0, _ = _quantized_error(x, b, Transform.NONE, s, r)
    xr, _, rel_r, _ = _quantized_error(x, b, Transform.ROTATE, s, r)
    xh, _, rel_h, _ = _quantized_error(x, b, Transform.SMOOTH_ROTATE, s, r)
    d0, dr = difficulty(channel_magnitudes(x0, 0)), difficulty(channel_magnitudes(xr, 0))
    assert dr < d0 / 10
    assert rel_r < 0.8 * rel0 and rel_h < rel_r


def test_module_kind():
    assert module_kind("model.layers.12.mlp.down_proj") == ("down_proj", 12)
    assert module_kind("model.layers.0.self_attn.q_proj") == ("q_proj", 0)
    assert module_kind("lm_head") == ("lm_head", -1)


def test_config_validation():
    for bad in (dict(tokens=10, seq=32), dict(seq=0), dict(alpha=1.5), dict(bits=1)):
        with pytest.raises(ValueError):
            AnalyzeConfig(**bad)


def _read_csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_end_to_end_tiny_llama(tiny_export, tmp_path):
    model = tiny_export("llama")
    out = tmp_path / "analysis"
    result = analyze_dir(model, out, AnalyzeConfig(tokens=64, seq=32), progress=False)
    channels = "channels_model.layers.1.mlp.down_proj.png"
    assert {p.name for p in out.iterdir()} == _FILES | {channels}
    for name in _FILES | {channels}:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:4] == b"\x89PNG"
    rows = _read_csv(out / "analysis.csv")
    assert len(rows) == (2 * 7 + 1) * 4 == len(result["rows"])
    assert json.loads((out / "analysis.json").read_text()) == result
    for r in rows:
        for key in ("act_difficulty", "weight_difficulty", "error", "rel_error", "estimate"):
            assert math.isfinite(float(r[key])) and float(r[key]) >= 0, r
    assert {r["transform"] for r in rows} == {t.value for t in Transform}
    down = [r for r in rows if r["module"] == "model.layers.1.mlp.down_proj"]
    assert [(r["type"], r["layer"], r["K"], r["N"]) for r in down] == [
        ("down_proj", "1", "96", "64")
    ] * 4
    lm = [r for r in rows if r["type"] == "lm_head"]
    assert len(lm) == 4 and all(r["layer"] == "-1" and r["N"] == "49152" for r in lm)
    # Activation difficulty "none" equals the std of calibration's per-channel L2 on the same text.
    stats = load_calibration(
        calibrate_dir(model, CalibrationConfig(64, 32, False), tmp_path / "c", progress=False)
    )
    for r in (r for r in rows if r["transform"] == "none"):
        want = float(np.std(stats.for_layer(r["module"]).l2))
        assert float(r["act_difficulty"]) == pytest.approx(want, rel=1e-4)
    # q/k/v read one activation with one s, so their X' (and difficulty) agree in every transform.
    by = {(r["module"], r["transform"]): float(r["act_difficulty"]) for r in rows}
    for t in Transform:
        q, k = (by[(f"model.layers.0.self_attn.{p}_proj", t.value)] for p in "qk")
        assert q == k
    summary = result["summary"]
    for ty, means in summary["mean_rel_error"].items():
        got = [
            float(r["rel_error"]) for r in rows if r["type"] == ty and r["transform"] == "rotate"
        ]
        assert means["rotate"] == pytest.approx(np.mean(got), rel=1e-5)
        assert summary["best"][ty] == min(means, key=means.get)
    assert "| q_proj |" in (out / "summary.md").read_text()


def test_refuses_foreign_output_and_leaves_nothing_behind(tiny_export, tmp_path, monkeypatch):
    model = tiny_export("llama")
    config = AnalyzeConfig(tokens=32, seq=32)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SmoothrotError, match="not a smoothrot output"):
        analyze_dir(model, foreign, config, progress=False)
    with pytest.raises(SmoothrotError, match="not a smoothrot output"):
        analyze_model(foreign, config)  # refused before any export
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    def fail(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(analyze, "write_report", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        analyze_dir(model, tmp_path / "out", config, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]


def test_cli(capsys, tiny_export, tmp_path):
    model, out = str(tiny_export("llama")), str(tmp_path / "a")
    assert main(["analyze", "--onnx", model, "-o", out, "--tokens", "8", "--seq", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smoothrot: error: ") and "tokens" in err[0]
    argv = ["analyze", "--onnx", model, "-o", out, "--tokens", "32", "--seq", "32"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| down_proj |" in printed and "analysis of 15 layers" in printed
    assert main([*argv, "--alpha", "0.3"]) == 0  # our own output directory is replaced
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["config"]["alpha"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
