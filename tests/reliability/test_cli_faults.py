"""Real failures through the command line on the tiny model: a full disk (ENOSPC) in export,
compile and lower, -o on a read-only filesystem or under a file, SIGTERM / SIGHUP at a named
pipeline step. Each: one line naming the cause, its exit status, nothing left beside -o (no
``.NAME.partial-*``) and no ``smoothrot-*`` scratch left in TMPDIR.

The filesystems are real where possible (a tmpfs in a private mount namespace, as root); where
not, the model writer and directory creation are made to fail the same way, so the test always
runs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smoothrot.tools.cli import main
from tests.reliability.test_cli_boundary import one_line

NO_SPACE = (os.strerror(errno.ENOSPC), "(is the disk full?)")
READ_ONLY = (os.strerror(errno.EROFS),)
_IN_NAMESPACE = r"""
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
for where, options in spec["mounts"]:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", where],
                          capture_output=True, text=True)
    if done.returncode:
        json.dump({"unavailable": done.stderr.strip()}, open(spec["report"], "w"))
        sys.exit(0)
from smoothrot.tools.cli import main
results = {}
for name, argv in spec["cases"].items():
    with open(os.path.join(spec["logs"], name), "w+b") as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            status = main(argv)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        results[name] = [status, log.read().decode(), sorted(os.listdir(os.path.dirname(argv[-1])))]
json.dump({"results": results}, open(spec["report"], "w"))
"""


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tiny_export, tmp_path_factory):
    """(HF dir, export, compiled QDQ dir) of the tiny Llama."""
    from smoothrot.compiler.config import Recipe
    from smoothrot.passes.quantize_weights import GroupingMode
    from tests.helpers import compile_rtn

    qdq = tmp_path_factory.mktemp("boundary") / "qdq"
    compile_rtn(tiny_export("llama"), qdq, Recipe.W4A16, GroupingMode.PER_OC, 32, tokens=512)
    return tiny_model_dir("llama"), tiny_export("llama"), qdq


def _filesystem_cases(tiny, full, read_only):
    hf, export, qdq = (str(p) for p in tiny)
    commands = {
        "export": ["export", "--model", hf],
        "compile": ["compile", "--onnx", export, "--recipe", "fp-rotate", "--no-eval"],
        "lower": ["lower", qdq, "--no-eval"],
    }
    cases = {f"{c}-enospc": ([*a, "-o", f"{full}/{c}"], NO_SPACE) for c, a in commands.items()}
    for c, a in commands.items():
        cases[f"{c}-erofs"] = ([*a, "-o", f"{read_only}/{c}"], READ_ONLY)
    return cases


def _in_a_mount_namespace(cases, full, read_only, tmp_path):
    """Each case run in one child with a 1 MiB tmpfs at ``full`` and a read-only one at
    ``read_only`` (root in a private mount namespace); None where that cannot be set up."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return None
    logs, report = tmp_path / "logs", tmp_path / "report.json"
    logs.mkdir()
    spec = {
        "mounts": [(str(full), "size=1m"), (str(read_only), "ro,size=1m")],
        "cases": {name: argv for name, (argv, _) in cases.items()},
        "logs": str(logs),
        "report": str(report),
    }
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    child = [
        "unshare", "-m", "--propagation", "private",
        sys.executable, "-c", _IN_NAMESPACE, json.dumps(spec),
    ]  # fmt: skip
    done = subprocess.run(child, capture_output=True, text=True, env=env, timeout=300)
    if not report.is_file():  # no namespace for us (unshare refused); the child itself never ran
        assert done.returncode != 0 and done.stderr.startswith("unshare:"), done.stderr
        return None
    return json.loads(report.read_text()).get("results")  # None: no tmpfs could be mounted


def _in_process_with_faults(capsys, monkeypatch, cases, full, read_only, tmp_path):
    """The same cases where no tmpfs can be mounted: writing a model raises ENOSPC, creating
    anything under ``read_only`` raises EROFS."""
    import tempfile

    import onnx_ir

    def no_space(model, path, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def refuse_under(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(read_only)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(onnx_ir, "save", no_space)
    monkeypatch.setattr(os, "mkdir", refuse_under(os.mkdir))
    monkeypatch.setattr(os, "open", refuse_under(os.open))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    results = {}
    for name, (argv, _) in cases.items():
        status = main(argv)
        listing = sorted(os.listdir(os.path.dirname(argv[-1])))
        results[name] = [status, capsys.readouterr().err, listing]
    return results


def test_full_disk_and_read_only_filesystem(capsys, monkeypatch, tiny, tmp_path):
    """ENOSPC in export, compile and lower, and -o on a read-only filesystem: one line that
    names the cause, exit 2, no staging directory left beside -o, no scratch left in TMPDIR."""
    full, read_only = tmp_path / "full", tmp_path / "ro"
    for d in (full, read_only, tmp_path / "tmp"):
        d.mkdir()
    cases = _filesystem_cases(tiny, full, read_only)
    results = _in_a_mount_namespace(cases, full, read_only, tmp_path)
    if results is None:
        results = _in_process_with_faults(capsys, monkeypatch, cases, full, read_only, tmp_path)
    for name, (_, causes) in cases.items():
        status, err, listing = results[name]
        lines = err.splitlines()
        assert status == 2 and len(lines) == 1, (name, status, err)
        assert lines[0].startswith("smoothrot: error: "), (name, lines)
        assert any(cause in lines[0] for cause in causes), (name, lines)
        assert not [f for f in listing if ".partial-" in f], (name, listing)
    assert not [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("smoothrot-")]


def test_output_under_a_file(capsys, tiny, tmp_path):
    hf, export, qdq = (str(p) for p in tiny)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = str(blocker / "out")
    for argv in (
        ["export", "--model", hf, "-o", out],
        ["compile", "--onnx", export, "--recipe", "fp-rotate", "--no-eval", "-o", out],
        ["lower", qdq, "--no-eval", "-o", out],
        ["calibrate", export, "--tokens", "64", "--seq", "32", "-o", out],
    ):
        assert str(blocker) in one_line(capsys, argv), argv
    assert blocker.read_text() == "not a directory"


def _stopped_at(step, argv, tmp_path):
    """Run the CLI as a child that signals itself right before pipeline step ``step``."""
    from smoothrot.core.pass_infra import FAULT_AT_ENV

    scratch = tmp_path / f"tmp-{step.replace(':', '-')}"
    scratch.mkdir()
    env = {**os.environ, FAULT_AT_ENV: step, "TMPDIR": str(scratch)}
    child = [sys.executable, "-m", "smoothrot.tools.cli", *argv]
    done = subprocess.run(child, capture_output=True, text=True, env=env, timeout=300)
    out = Path(argv[-1])
    assert not out.exists(), sorted(out.iterdir())
    assert not list(out.parent.glob(f".{out.name}.partial-*")), sorted(out.parent.iterdir())
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("smoothrot-")]
    return done.returncode, done.stderr.splitlines()


def test_sigterm_and_sighup_clean_up(tiny, tmp_path):
    """SIGTERM in a compile (after the float graph was saved, before the Hessians) and SIGHUP in
    a lowering: one line, 143 / 129, nothing left beside -o or in TMPDIR."""
    _, export, qdq = tiny
    argv = ["compile", "--onnx", str(export), "--recipe", "w4a16", "--algorithm", "rtn"]
    argv += ["--calibration-tokens", "512", "--no-eval", "-o", str(tmp_path / "c")]
    assert _stopped_at("calibrate_hessians", argv, tmp_path) == (
        143, ["smoothrot: terminated by SIGTERM"]
    )  # fmt: skip
    argv = ["lower", str(qdq), "--no-eval", "-o", str(tmp_path / "l")]
    assert _stopped_at("lower_int4:SIGHUP", argv, tmp_path) == (
        129, ["smoothrot: terminated by SIGHUP"]
    )  # fmt: skip
