"""A streamed compile killed between layers keeps its finished layers and ``--resume`` goes on
from them to a byte-identical model; a journal of another config is refused by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from smoothrot.compiler.modeldir.outdir import RESUME_JOURNAL
from smoothrot.core.pass_infra import FAULT_AT_ENV


def _cli(argv, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FAULT_AT_ENV}
    if fault:
        env[FAULT_AT_ENV] = fault
    child = [sys.executable, "-m", "smoothrot.tools.cli", *argv]
    return subprocess.run(child, capture_output=True, text=True, env=env, timeout=600)


def _staging(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.partial-*"))


def test_killed_compile_resumes_to_identical_bytes(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("llama", 4))
    flags = ["--recipe", "w4a16", "--calibration-tokens", "512", "--no-eval"]
    whole = tmp_path / "whole"
    assert _cli(["compile", "--model", model, *flags, "-o", str(whole)]).returncode == 0
    out = tmp_path / "out"
    stopped = _cli(["compile", "--model", model, *flags, "-o", str(out)], fault="layer.2")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == "smoothrot: terminated by SIGTERM"
    assert "--resume" in stopped.stderr
    assert not out.exists()
    (staging,) = _staging(out)
    assert (staging / RESUME_JOURNAL).is_file()
    assert len(list((staging / "work" / "layers").iterdir())) == 2

    other = _cli(["compile", "--model", model, *flags, "--seed", "1", "--resume", "-o", str(out)])
    assert other.returncode == 2
    assert "another config" in other.stderr.strip().splitlines()[-1]

    # SIGKILL leaves no chance to clean up; the journal still lets the next run go on.
    killed = _cli(["compile", "--model", model, *flags, "--resume", "-o", str(out)],
                  fault="layer.3:SIGKILL")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    resumed = _cli(["compile", "--model", model, *flags, "--resume", "-o", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    assert not _staging(out)
    for name in ("model.onnx", "model.onnx.data"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
