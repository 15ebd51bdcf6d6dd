"""tools/gpu_check.py: its dry run, its one-line refusals, its targets and its package shim."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from smoothrot.tools.gpu_check import KERNEL_TESTS, evaluate_targets, package_shim

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.py"


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    full_env.pop("TRITON_INTERPRET", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=full_env, capture_output=True, text=True
    )


def test_dry_run_rehearses_every_section_and_measures_nothing(tmp_path):
    done = _run(["--dry-run", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry_run"] is True and result["tool"] == "gpu_check"
    # the kernels were imported through the temporary symlink tree, not an installed smoothrot
    assert all("smoothrot-shim-" in p for p in result["environment"]["smoothrot_path"])
    tests = result["sections"]["kernel_tests"]
    assert tests["status"] == "collected" and tests["collected"] >= 20
    assert (tmp_path / "kernel_tests.xml").is_file()
    bench = result["sections"]["bench_kernels"]
    assert bench["ok"] and bench["status"].startswith("rehearsal")
    kernels = {r["kernel"] for r in bench["rows"]}
    assert {"w4a16 per-oc", "w4a16 per-ic", "w4a8 per-oc", "w4a8 per-ic", "torch fp16"} <= kernels
    assert all(r["rel_error"] < 2e-3 for r in bench["rows"] if r["rel_error"] is not None)
    assert result["sections"]["targets"] and all(
        t["met"] is None for t in result["sections"]["targets"]
    )
    md = (tmp_path / "gpu_check.md").read_text()
    assert "DRY RUN, not a measurement" in md and "not measured" in md
    assert "| 64x128 | 5 | w4a16 per-ic |" in md  # M = 5 ran the prefill kernel


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_one_line_and_exit_2(tmp_path):
    done = _run(["--out", str(tmp_path)])
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0] and "--dry-run" in err[0]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "no CUDA device" in result["stopped"] and result["sections"] == {}


def test_missing_triton_one_line_and_exit_2(tmp_path):
    fake = tmp_path / "fake" / "triton"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no Triton in this environment')\n")
    done = _run(["--dry-run", "--out", str(tmp_path / "out")], PYTHONPATH=str(fake.parent))
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot import" in err[0] and "no Triton" in err[0]


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    done = _run(["--dry-run", "--out", str(target)])
    assert done.returncode == 2 and "not a directory" in done.stderr
    assert target.read_text() == "keep me"


def _row(shape: str, m: int, kernel: str, us: float, roofline: float = 0.5) -> dict:
    return {"shape": shape, "m": m, "kernel": kernel, "median_us": us, "roofline": roofline}


def test_targets_met_not_met_and_not_measured():
    rows = [
        _row("14336x4096", 1, "w4a16 per-oc", 10.0, 0.75),
        _row("14336x4096", 1, "w4a16 per-ic", 12.0, 0.62),
        _row("14336x4096", 1, "torch fp16", 11.0),
        _row("14336x4096", 16, "w4a16 per-oc", 1.0),  # prefill rows judge nothing here
    ]
    by_name = {t["target"]: t for t in evaluate_targets(rows)}
    roofline = "fraction of copy bandwidth"
    assert by_name[f"w4a16 per-oc M=1 14336x4096: {roofline}"]["met"] is True
    assert by_name[f"w4a16 per-ic M=1 14336x4096: {roofline}"]["met"] is False
    ratio = by_name["w4a16 M=1 14336x4096: per-IC / per-OC time"]
    assert ratio["value"] == 1.2 and ratio["met"] is False
    assert by_name["w4a16 per-oc M=1 14336x4096: torch fp16 time / ours"]["met"] is True
    assert by_name["w4a16 per-ic M=1 14336x4096: torch fp16 time / ours"]["met"] is False
    assert not any("w4a8" in name for name in by_name)  # not in the rows: not invented
    empty = evaluate_targets([])
    assert len(empty) == 2 and all(t["met"] is None and t["value"] is None for t in empty)


def test_package_shim_maps_every_package_dir(tmp_path):
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    root = package_shim(REPO, tmp_path / "shim") / "smoothrot"
    for package, folder in mapping["package-dir"].items():
        link = root / package.rpartition(".")[2]
        assert link.is_symlink() and link.resolve() == (REPO / folder).resolve()
    assert all((REPO / t).is_file() for t in KERNEL_TESTS)
