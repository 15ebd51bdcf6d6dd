import json

import numpy as np
import pytest
import torch

from smoothrot.compiler.calibrate.statistics import calibrate_dir, load_calibration
from smoothrot.compiler.config import CalibrationConfig
from smoothrot.compiler.measure.corpus import CorpusPart, corpus_part
from smoothrot.compiler.modeldir.sources import load_torch_model, resolve_source
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import load_manifest


def _torch_inputs(model, tokenizer, seq: int, count: int) -> dict[str, np.ndarray]:
    """Every Linear's input over the same calibration sequences, captured with hooks."""
    ids = tokenizer.encode(corpus_part(CorpusPart.CALIBRATION), add_special_tokens=False)
    batches = torch.tensor(ids[: seq * count]).reshape(count, seq)
    seen: dict[str, list[np.ndarray]] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda _m, a, n=name: seen.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1]))
        )
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    with torch.no_grad():
        for row in batches:
            model(row[None])
    for h in hooks:
        h.remove()
    return {k: torch.cat(v).double().numpy() for k, v in seen.items()}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_statistics_equal_torch_reference(tmp_path, tiny_model_dir, tiny_export, arch):
    out = calibrate_dir(
        tiny_export(arch), CalibrationConfig(tokens=96, seq=32), tmp_path / "c", progress=False
    )
    stats = load_calibration(out)
    model, tok = load_torch_model(resolve_source(tiny_model_dir(arch)))
    ref = _torch_inputs(model, tok, 32, 3)
    assert set(stats.layers) == set(load_manifest(tiny_export(arch)).weights) == set(ref)
    assert stats.tokens == 96
    for module, x in ref.items():
        a = stats.for_layer(module)
        np.testing.assert_allclose(a.absmax, np.abs(x).max(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.l2, np.sqrt((x * x).sum(0)), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.hessian, x.T @ x, rtol=1e-3, atol=1e-4 * np.abs(x.T @ x).max())
    # q, k and v read the same normed activation: one entry, three consumers.
    q = stats.for_layer("model.layers.0.self_attn.q_proj")
    assert q is stats.for_layer("model.layers.0.self_attn.v_proj") and len(q.consumers) == 3


def test_index_format_and_default_location(tiny_export, tmp_path):
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_export("llama"), model_dir)
    out = calibrate_dir(
        model_dir, CalibrationConfig(tokens=32, seq=32, hessian=False), progress=False
    )
    assert out == model_dir / "calibration"
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "smoothrot-calibration" and index["version"] == 1
    assert index["text"] == "pydoc_data calibration part"
    entry = index["activations"][index["layers"]["model.layers.1.mlp.down_proj"]]
    assert entry["channels"] == 96 and "hessian" not in entry
    assert load_calibration(out).for_layer("lm_head").hessian is None


def test_refuses_foreign_output_and_short_text(tiny_export, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    with pytest.raises(SmoothrotError, match="not a smoothrot output"):
        calibrate_dir(tiny_export("llama"), CalibrationConfig(tokens=32, seq=32), foreign)
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    with pytest.raises(SmoothrotError, match="calibration text too short"):
        calibrate_dir(
            tiny_export("llama"), CalibrationConfig(tokens=64, seq=32), tmp_path / "c", short
        )
    assert not (tmp_path / "c").exists()


def test_config_validation():
    with pytest.raises(ValueError):
        CalibrationConfig(tokens=10, seq=32)
