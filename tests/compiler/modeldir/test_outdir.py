"""compiler/modeldir/outdir.py: outputs appear whole or not at all, never replace what is not
ours (before or during the run), never an input, one run per output at a time, and what a dead
run left behind is cleaned at the next one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from smoothrot.compiler.modeldir import outdir
from smoothrot.compiler.modeldir.outdir import (
    RESUME_JOURNAL,
    atomic_output_dir,
    check_output_dir,
    scratch_dir,
    staged_output,
)
from smoothrot.core.errors import SmoothrotError, Terminated
from smoothrot.core.manifest import MANIFEST_NAME


def _write(path, text="new"):
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST_NAME).write_text(text)
    return path


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(params=[True, False], ids=["renameat2", "two-renames"])
def swap(request, monkeypatch):
    """Run each case with the kernel's atomic rename and with the plain-rename fallback."""
    if not request.param:
        monkeypatch.setattr(outdir, "_renameat2", lambda src, dst, flags: False)
    return request.param


def test_a_new_output_appears_whole_and_nothing_is_left(tmp_path, swap):
    out = tmp_path / "o"
    with staged_output(out) as stage:
        _write(stage.out)
        (stage.work / "scratch").write_text("x")
        assert not out.exists()
    assert (out / MANIFEST_NAME).read_text() == "new" and not (out / "scratch").exists()
    assert _leftovers(tmp_path) == []


def test_our_old_output_is_replaced_and_kept_on_failure(tmp_path, swap):
    out = _write(tmp_path / "o", "old")
    with pytest.raises(RuntimeError), staged_output(out) as stage:
        _write(stage.out)
        raise RuntimeError("the command failed")
    assert (out / MANIFEST_NAME).read_text() == "old" and _leftovers(tmp_path) == []
    with staged_output(out) as stage:
        _write(stage.out)
    assert (out / MANIFEST_NAME).read_text() == "new" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), Terminated(15)])
def test_an_interrupted_run_cleans_up(tmp_path, stop):
    out = tmp_path / "o"
    with pytest.raises(type(stop)), staged_output(out) as stage:
        _write(stage.out)
        raise stop
    assert not out.exists() and _leftovers(tmp_path) == []


def test_what_appears_at_the_output_during_the_run_is_left_alone(tmp_path, swap):
    out = tmp_path / "o"
    refused = pytest.raises(SmoothrotError, match="appeared .*during the run")
    with refused, staged_output(out) as stage:
        _write(stage.out)
        out.mkdir()
        (out / "thesis.tex").write_text("mine")
    assert (out / "thesis.tex").read_text() == "mine" and _leftovers(tmp_path) == []
    ours = _write(tmp_path / "p", "old")
    refused = pytest.raises(SmoothrotError, match="changed during the run")
    with refused, staged_output(ours) as stage:
        _write(stage.out)
        (ours / MANIFEST_NAME).unlink()  # no longer ours
    assert list(ours.iterdir()) == []


def test_one_run_per_output_at_a_time(tmp_path):
    out = tmp_path / "o"
    with staged_output(out) as stage:
        _write(stage.out)
        busy = pytest.raises(SmoothrotError, match=f"in use by pid {os.getpid()}")
        with busy, staged_output(out):
            pass
    with staged_output(out) as stage:  # released
        _write(stage.out)


def test_a_second_process_is_refused_while_the_first_holds_the_output(tmp_path):
    out = tmp_path / "o"
    code = (
        "import sys; from smoothrot.compiler.modeldir.outdir import staged_output\n"
        f"with staged_output(__import__('pathlib').Path({str(out)!r})):\n    pass\n"
    )
    with staged_output(out) as stage:
        _write(stage.out)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and f"in use by pid {os.getpid()}" in done.stderr


def test_refused_outputs(tmp_path, monkeypatch):
    ours = _write(tmp_path / "ours")
    (tmp_path / "link").symlink_to(ours)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    (tmp_path / "foreign").mkdir()
    cases = {
        tmp_path / "link": "is a symbolic link",
        tmp_path / "dangling": "is a symbolic link",
        tmp_path / "file" / "o": "is not a directory",
        tmp_path / "foreign": "exists and is not a smoothrot output directory",
        tmp_path / "file": "exists and is not a smoothrot output file",
    }
    for out, message in cases.items():
        with pytest.raises(SmoothrotError, match=message):
            check_output_dir(out)
    model = _write(tmp_path / "model")
    for out, relation in ((model, "is the input"), (model / "sub", "is inside the input"),
                          (tmp_path, "holds the input")):  # fmt: skip
        with pytest.raises(SmoothrotError, match=relation):
            check_output_dir(out, inputs=[model])
    monkeypatch.chdir(ours)
    with pytest.raises(SmoothrotError, match="is the current directory"):
        check_output_dir(tmp_path / "ours" / ".")
    assert (tmp_path / "link").is_symlink() and (ours / MANIFEST_NAME).read_text() == "new"


def test_stale_staging_of_a_dead_process_is_removed_at_the_next_run(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    out = tmp_path / "o"
    stale, journal, alive = (tmp_path / f".o.partial-{n}" for n in ("a", "b", "c"))
    for path, pid in ((stale, dead), (journal, dead), (alive, "1")):
        path.mkdir()
        (path / "pid").write_text(pid)
    (journal / RESUME_JOURNAL).write_text("{}")
    with staged_output(out) as stage:
        _write(stage.out)
    assert not stale.exists() and journal.exists() and alive.exists()


def test_scratch_beside_the_output_is_hidden_and_removed(tmp_path):
    with scratch_dir(tmp_path / "o") as work:
        assert work.parent == tmp_path and work.name.startswith(".o.partial-")
        assert (work / "pid").read_text().strip() == str(os.getpid())
    assert _leftovers(tmp_path) == []
    with atomic_output_dir(tmp_path / "o") as result:
        _write(result)
    assert (tmp_path / "o" / MANIFEST_NAME).is_file()


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is a Linux system call")
def test_the_swap_is_the_kernels_atomic_exchange_here(tmp_path):
    a, b = _write(tmp_path / "a", "a"), _write(tmp_path / "b", "b")
    assert outdir._renameat2(a, b, outdir._RENAME_EXCHANGE)  # not the two-rename fallback
    assert (a / MANIFEST_NAME).read_text() == "b" and (b / MANIFEST_NAME).read_text() == "a"
