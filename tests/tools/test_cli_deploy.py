"""`smoothrot compile --target ort`, `lower` and `bench` on a tiny model, and their bad input."""

import json

import onnx

from smoothrot.tools.cli import main
from tests.tools.test_cli import _fails_cleanly


def test_compile_target_ort_lowers_and_benches(capsys, tmp_path, tiny_export):
    out = tmp_path / "ort"
    argv = ["compile", "--onnx", str(tiny_export("llama")), "--recipe", "w4a8", "-o", str(out)]
    argv += ["--group-size", "32", "--grouping", "per-ic", "--algorithm", "rtn"]
    argv += ["--calibration-tokens", "1024", "--target", "ort", "--no-eval"]
    assert main(argv) == 0
    assert "lowered 14 layers" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ort"]  # no QDQ leftover
    report = json.loads((out / "lowering.json").read_text())
    assert report["accuracy_level"] == 4 and report["layers"]["by_grouping"] == {"per-ic": 14}
    assert report["exactness_level0"]["max_abs_logit_diff"] < 1e-3
    assert {"report.md", "lowering.md", "smoothrot.json"} <= {p.name for p in out.iterdir()}
    assert report["per_ic_kernel"] == "ortops"
    assert report["layers"]["kernel_nodes"] == {"MatMulInt4PerIC": 14}
    assert report["rotation_kernel"] == "ortops" and not report["rotations"]["left_as_matmuls"]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    rotations = [n for n in graph.node if n.op_type == "KroneckerRotation"]
    assert len(rotations) == report["rotations"]["lowered"] == 2  # down_proj inputs
    assert report["attention"] == {"lowered": 2, "left_as_exported": {}}
    assert report["exactness_level0"]["decode_steps"] == 32  # the KV-cache path is checked too
    levels = {
        a.i
        for n in graph.node
        if n.op_type == "MatMulInt4PerIC"
        for a in n.attribute
        if a.name == "accuracy_level"
    }
    assert levels == {4} and not any(n.op_type == "Reciprocal" for n in graph.node)

    bench = ["bench", str(out), "--runs", "2", "--prompt-tokens", "8", "--new-tokens", "4"]
    assert main(bench + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decode_tokens_per_s"] > 0 and len(result["decode_runs"]) == 2
    assert 0 < result["decode_weight_bytes"] < result["model_bytes"]
    assert result["peak_rss_bytes"] > 0
    assert main(bench + ["--profile"]) == 0  # the ops the lowering wrote, with their share
    assert "| op type | ms / token | share | nodes |" in capsys.readouterr().out
    assert main(bench + ["--profile", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)["profile"]
    assert profile["by_op"]["GroupedAttention"]["nodes"] == 2
    assert profile["by_op"]["KroneckerRotation"]["nodes"] == 2
    assert 0 < profile["online_rotation_share"] < 1


def test_lower_without_the_op_library_fails_in_one_line(capsys, tmp_path, tiny_export, monkeypatch):
    from smoothrot.compiler.targets.ort import lower
    from smoothrot.ortops.library import OrtOpsUnavailable

    def unavailable(build: bool = True):
        raise OrtOpsUnavailable("no C++ compiler (g++) on this machine")

    monkeypatch.setattr(lower, "library_path", unavailable)
    out = tmp_path / "ort"
    argv = ["compile", "--onnx", str(tiny_export("llama")), "--recipe", "w4a16", "-o", str(out)]
    argv += ["--group-size", "32", "--grouping", "per-ic", "--algorithm", "rtn"]
    argv += ["--calibration-tokens", "1024", "--target", "ort", "--no-eval"]
    assert main(argv) == 2  # after the compile's progress bars, one error line
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "smoothrot: error: no C++ compiler (g++) on this machine"
    assert not any("Traceback" in line for line in err)
    assert list(tmp_path.iterdir()) == []  # neither the output nor the QDQ leftover
    split = argv[:-1] + ["--per-ic", "split", "--rotation", "matmul", "--attention", "standard"]
    split.append("--no-eval")
    assert main(split) == 0  # standard ops only: no library needed
    report = json.loads((out / "lowering.json").read_text())
    assert report["per_ic_kernel"] == "split" and "MatMulInt4PerIC" not in str(report["layers"])
    assert report["rotations"]["lowered"] == report["attention"]["lowered"] == 0


def test_per_oc_kernel_choice(capsys, tmp_path, tiny_export, monkeypatch):
    """Per-OC layers (groups of 64) run our op by default; --per-oc matmulnbits needs no library."""
    from smoothrot.compiler.targets.ort import lower

    argv = ["compile", "--onnx", str(tiny_export("llama")), "--recipe", "w4a16"]
    argv += ["--group-size", "64", "--grouping", "per-oc", "--algorithm", "rtn"]
    argv += ["--calibration-tokens", "1024", "--target", "ort", "--no-eval", "-o"]
    assert main(argv + [str(tmp_path / "ours")]) == 0
    report = json.loads((tmp_path / "ours" / "lowering.json").read_text())
    kernels = report["layers"]["kernel_nodes"]
    assert report["per_oc_kernel"] == "ortops" and kernels["MatMulInt4PerOC"] > 0
    assert sum(kernels.values()) == 14 and report["exactness_level0"]["max_abs_logit_diff"] < 1e-3

    from smoothrot.ortops.library import OrtOpsUnavailable

    def unavailable(build: bool = True):
        raise OrtOpsUnavailable("no C++ compiler (g++) on this machine")

    monkeypatch.setattr(lower, "library_path", unavailable)
    capsys.readouterr()
    assert main(argv + [str(tmp_path / "x")]) == 2  # after the progress bars, one error line
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("no C++ compiler (g++) on this machine")
    )
    assert not (tmp_path / "x").exists()
    standard = ["--per-oc", "matmulnbits", "--rotation", "matmul", "--attention", "standard"]
    assert main(argv + [str(tmp_path / "nbits"), *standard]) == 0
    report = json.loads((tmp_path / "nbits" / "lowering.json").read_text())
    assert report["layers"]["kernel_nodes"] == {"MatMulNBits": 14}


def test_lower_and_bench_bad_input(capsys, tmp_path, tiny_export):
    fp32 = str(tiny_export("llama"))
    out = tmp_path / "o"
    _fails_cleanly(capsys, ["lower", fp32, "-o", str(out)], "no INT4 QDQ MatMul")
    _fails_cleanly(capsys, ["lower", fp32, "-o", fp32], "is the input")
    _fails_cleanly(capsys, ["lower", str(tmp_path / "none"), "-o", str(out)], "does not exist")
    target = ["compile", "--onnx", fp32, "--recipe", "fp-rotate", "--target", "ort"]
    _fails_cleanly(capsys, target + ["-o", str(out)], "needs an INT4 recipe")
    _fails_cleanly(capsys, ["bench", fp32, "--runs", "0"], "runs must be >= 1")
    assert not out.exists()
