"""bench_scale: random checkpoints load as transformers' Llama; every step on the tiny shape; the
docs page; refusals told from failures; usage errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from smoothrot.tools import bench_docs, bench_scale, scale_docs
from smoothrot.tools.random_checkpoint import SHAPES, tensor_shapes, write_random_checkpoint

SHARD = 26 * 10**6  # above the tiny shape's largest tensor (25.2 MB), far below its 55 MB


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, default_tokenizer) -> Path:
    tokenizer = tmp_path_factory.mktemp("tokenizer")
    default_tokenizer.save_pretrained(tokenizer)
    out = tmp_path_factory.mktemp("tiny-random") / "checkpoint"
    written = write_random_checkpoint(
        out, SHAPES["tiny"], tokenizer_dir=tokenizer, shard_bytes=SHARD
    )
    assert written == sum(f.stat().st_size for f in out.iterdir())
    return out


def test_shards_index_and_dtype(tiny_checkpoint):
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())
    expected = dict(tensor_shapes(SHAPES["tiny"]))
    assert set(index["weight_map"]) == set(expected)
    shards = sorted(tiny_checkpoint.glob("model-*.safetensors"))
    assert len(shards) >= 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert all(p.name.endswith(f"-of-{len(shards):05d}.safetensors") for p in shards)
    total = 0
    for path in shards:
        with safe_open(str(path), "pt") as f:
            names = list(f.keys())
            assert all(index["weight_map"][n] == path.name for n in names)
            tensors = [f.get_tensor(n) for n in names]
        assert all(t.dtype == torch.bfloat16 for t in tensors)
        assert all(tuple(t.shape) == expected[n] for n, t in zip(names, tensors, strict=True))
        data = sum(t.numel() * 2 for t in tensors)
        assert data <= SHARD and path.stat().st_size <= data + 64 * 1024  # + the header
        total += data
    assert index["metadata"]["total_size"] == total == 2 * SHAPES["tiny"].params


def test_loads_as_llama_with_every_key(tiny_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(
        tiny_checkpoint, dtype=torch.bfloat16, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    config, shape = model.config, SHAPES["tiny"]
    assert config.model_type == "llama" and config.hidden_size == shape.hidden
    assert config.num_key_value_heads == shape.kv_heads and not config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == shape.params
    norm = model.model.layers[0].input_layernorm.weight.float()
    assert (norm > 5).sum() == 4 and ((norm > 0.49) & (norm < 1.51)).sum() == shape.hidden - 4
    assert len(AutoTokenizer.from_pretrained(str(tiny_checkpoint))) == 49152


def test_shape_parameter_counts():
    assert SHAPES["1b"].params == 1_235_814_400  # Llama-3.2-1B, lm_head tied
    assert SHAPES["8b"].params == 8_030_261_248  # Llama-3-8B
    assert "lm_head.weight" not in dict(tensor_shapes(SHAPES["1b"]))


def test_unknown_shape_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_scale.main(["--shape", "70b"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "70b" in err


def test_too_little_disk_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_scale, "_free_disk", lambda path: 10**9)
    with pytest.raises(SystemExit) as exc:
        bench_scale.main(["--shape", "8b", "--work", str(tmp_path), "--docs", str(tmp_path / "d")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "GB free" in err
    assert list(tmp_path.iterdir()) == []


def _entry(shape: str, wall: float, rss: float, rc: int = 0) -> dict:
    run = {"argv": [], "rc": rc, "wall_s": wall, "peak_rss_mb": rss, "tail": [], "error": ""}
    return {
        "shape": shape,
        "date": "2026-01-01 00:00 UTC",
        "commit": "abc1234",
        "cpu": "Test CPU",
        "cores": 2,
        "ram_bytes": 2**34,
        "params": SHAPES[shape].params,
        "recipe": "w4a16",
        "extra_args": "",
        "commands": {"compile": run, "lower": run},
        "stages": [{"stage": "export", "seconds": 1.5, "peak_rss_mb": 900.0}],
        "disk_bytes": {"compiled": 10**9},
        "checkpoint_bytes": SHAPES[shape].bf16_bytes,
        "bench": {"decode_tokens_per_s": 12.5},
    }


def test_docs_keep_one_entry_per_shape(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_docs, "_git", lambda *args: None)
    docs = tmp_path / "docs" / "scale.md"
    scale_docs.write_docs(docs, _entry("1b", 900.0, 3000.0), "cmd", [])  # 15 min: too slow
    scale_docs.write_docs(docs, _entry("8b", 3600.0, 20000.0), "cmd", [])  # 19.5 GiB: too much
    scale_docs.write_docs(docs, _entry("1b", 600.0, 3000.0), "cmd", [])  # replaces the first
    data = json.loads(docs.with_suffix(".json").read_text())
    assert sorted(data) == ["1b", "8b"] and data["1b"]["commands"]["compile"]["wall_s"] == 600
    text = docs.read_text()
    assert "10.0 min (≤ 12 min: pass)" in text and "2.93 GiB (≤ 4 GiB: pass)" in text
    assert "60.0 min (≤ 90 min: pass)" in text and "19.53 GiB (≤ 12 GiB: FAIL)" in text
    assert "| export | 1.5 | 900.0 |" in text and "](scale.png)" in text
    assert docs.with_suffix(".png").stat().st_size > 0


def test_a_refusal_is_told_from_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_docs, "_git", lambda *args: None)
    entry = _entry("8b", 600.0, 3000.0)
    line = "smoothrot: error: building X (3 × its 7.4 GB model, plus libraries) needs ~24.1 GB"
    entry["commands"]["build"] = {**entry["commands"]["lower"], "rc": 2, "error": line}
    entry["commands"]["eval"] = {**entry["commands"]["lower"], "rc": 1, "error": "boom"}
    assert scale_docs.outcome(entry["commands"]["build"]) == f"refused up front: {line}"
    assert scale_docs.outcome(entry["commands"]["eval"]) == "FAILED (rc 1): boom"
    assert scale_docs.outcome(entry["commands"]["lower"]) == "ok"
    docs = tmp_path / "scale.md"
    scale_docs.write_docs(docs, entry, "cmd", [])
    text = docs.read_text()
    assert f"| `build` | 10.0 min | — | refused up front: {line} |" in text
    assert "| `eval` | 10.0 min | — | FAILED (rc 1): boom |" in text


def test_run_measured_keeps_the_last_error_line(tmp_path):
    code = "import sys; print('out'); sys.stderr.write('50%\\r100%\\nbad input\\n'); sys.exit(2)"
    r = bench_scale.run_measured([sys.executable, "-c", code], "t", tmp_path)
    assert r["rc"] == 2 and r["tail"] == ["out"] and r["error"] == "bad input"
    assert r["wall_s"] > 0 and r["peak_rss_mb"] > 0
    ok = bench_scale.run_measured([sys.executable, "-c", "pass"], "u", tmp_path)
    assert ok["rc"] == 0 and ok["error"] == ""


@pytest.mark.parametrize(
    ("steps", "message"),
    [("compile,warp", "unknown step 'warp'"), ("bench", "step 'bench' needs 'lower'")],
)
def test_bad_steps_are_one_line_exit_2(capsys, steps, message):
    with pytest.raises(SystemExit) as exc:
        bench_scale.main(["--shape", "tiny", "--steps", steps])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


@pytest.mark.slow
def test_every_step_on_the_tiny_shape(tmp_path, monkeypatch):
    """compile, lower, bench, eval, generate, build and the exactness check all run as the user
    would run them (their own processes), and the page reports each."""
    docs = tmp_path / "docs" / "scale.md"
    argv = ["--shape", "tiny", "--steps", "all", "--work", str(tmp_path / "w"), "--docs", str(docs)]
    bench_scale.main(argv)  # exits non-zero when a command failed
    data = json.loads(docs.with_suffix(".json").read_text())["tiny"]
    assert list(data["commands"]) == [
        "compile", "lower", "bench", "eval", "generate", "build",
        "export", "compile-exact", "exact",
    ]  # fmt: skip
    assert all(r["rc"] == 0 and r["peak_rss_mb"] > 0 for r in data["commands"].values())
    assert data["exact"]["max_abs_logit_diff"] < 1e-4 and data["exact"]["tokens"] == 128
    assert data["bench"]["decode_tokens_per_s"] > 0 and data["eval"]["ppl"] > 1
    assert data["disk_bytes"]["engine"] > 0 and data["stages"]
    assert not (tmp_path / "w" / "tiny").exists()  # deleted without --keep
    assert "| `exact` |" in docs.read_text() and "(≤ 0.001: pass)" in docs.read_text()
