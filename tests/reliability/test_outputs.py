"""Through the real command line on the tiny model: no command loses or overwrites data — an
output over, inside or holding its input, a symlinked output, a directory that appears at -o
during the run — and no run leaves staging or scratch directories behind."""

from __future__ import annotations

import hashlib
import shutil

import pytest

import smoothrot.compiler.compile as compile_module
from smoothrot.tools.cli import main


def _digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _one_line_error(capsys, argv, message) -> None:
    """Exit 2 and one error line, the last thing printed (progress bars may come before it)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("smoothrot")]
    assert errors == err[-1:] and message in err[-1], err
    assert not any("Traceback" in line for line in err)


@pytest.fixture(scope="module")
def export(tiny_export, tmp_path_factory):
    """A private copy of the tiny export (tests damage nothing shared)."""
    dst = tmp_path_factory.mktemp("inputs") / "fp32"
    shutil.copytree(tiny_export("llama"), dst)
    return dst


@pytest.fixture(scope="module")
def qdq(export):
    out = export.parent / "qdq"
    argv = ["compile", "--onnx", str(export), "--recipe", "w4a16", "-o", str(out)]
    assert main([*argv, "--algorithm", "rtn", "--group-size", "32", "--no-eval"]) == 0
    return out


def _compile(src, out, *extra):
    return ["compile", "--onnx", str(src), "--recipe", "w4a16", "-o", str(out), *extra]


def test_an_output_over_inside_or_holding_the_input_is_refused(capsys, export, qdq):
    before = _digest(export.parent)
    relations = (("is the input", ""), ("is inside the input", "sub"), ("holds the input", ".."))
    for relation, where in relations:
        out = (export / where).resolve() if where else export
        _one_line_error(capsys, _compile(export, out), relation)
        _one_line_error(capsys, _compile(export, out, "--target", "ort"), relation)
        low = (qdq / where).resolve() if where else qdq
        _one_line_error(capsys, ["lower", str(qdq), "-o", str(low)], relation)
        _one_line_error(capsys, ["build", str(qdq), "-o", str(low)], relation)
    assert _digest(export.parent) == before


def test_a_symlinked_output_is_refused_before_any_work(capsys, export, qdq, tmp_path):
    (tmp_path / "to-ours").symlink_to(qdq)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    before = _digest(qdq)
    for link in ("to-ours", "dangling"):
        _one_line_error(capsys, ["lower", str(qdq), "-o", str(tmp_path / link)], "symbolic link")
    assert (tmp_path / "to-ours").is_symlink() and _digest(qdq) == before


def test_a_directory_made_at_the_output_during_the_run_survives(capsys, export, monkeypatch,
                                                                tmp_path):  # fmt: skip
    out = tmp_path / "o"
    real = compile_module.write_report

    def report_then_someone_writes_at_o(*args, **kwargs):
        report = real(*args, **kwargs)
        out.mkdir()
        (out / "thesis.tex").write_text("mine")
        return report

    monkeypatch.setattr(compile_module, "write_report", report_then_someone_writes_at_o)
    argv = _compile(export, out, "--algorithm", "rtn", "--group-size", "32", "--no-eval")
    _one_line_error(capsys, argv, "appeared or changed during the run")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no staging, no lock left


def test_leftovers_of_a_killed_run_are_cleaned_and_lower_hides_its_scratch(capsys, qdq,
                                                                          tmp_path):  # fmt: skip
    dead = tmp_path / ".low.partial-4194303-x"  # above the default pid_max: no such process
    dead.mkdir()
    (dead / "pid").write_text("4194303")
    (dead / "model.onnx.data").write_bytes(b"\0" * 1024)
    assert main(["lower", str(qdq), "-o", str(tmp_path / "low"), "--no-eval"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["low"]
