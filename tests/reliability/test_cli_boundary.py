"""The command line's error boundary: every expected failure is one line on stderr and exit
status 2, a bug one line and exit 1 (its traceback with -v), a signal one line and exit 128 + N,
argparse's errors one line. Each exception class is raised from a stand-in driver; the real
failures on the tiny model are in ``test_cli_faults.py``."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

import smoothrot.compiler.measure.evaluate as evaluate_module
from smoothrot.core.errors import SmoothrotError, Terminated
from smoothrot.tools.cli import main


def one_line(capsys, argv, status=2, prefix="smoothrot: error: ") -> str:
    """Run the CLI: ``status``, and stderr exactly one line starting with ``prefix``."""
    assert main(argv) == status
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(prefix), err
    return err[0]


def _fail_with(monkeypatch, make):
    """`smoothrot eval` whose driver calls ``make()`` (which raises)."""

    def driver(*args, **kwargs):
        make()
        raise AssertionError("make() did not raise")

    monkeypatch.setattr(evaluate_module, "evaluate_dir", driver)
    return ["eval", "some-model"]


def _raise(exc):
    def make():
        raise exc

    return make


def _ort(name, text):
    import onnxruntime.capi.onnxruntime_pybind11_state as state

    return _raise(getattr(state, name)(text))


def _ort_load(path_fn):
    def make():
        import onnxruntime

        onnxruntime.InferenceSession(str(path_fn()), providers=["CPUExecutionProvider"])

    return make


def _garbage(tmp_path, name, data=b"\x01\x02 not a protobuf"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _protobuf(tmp_path):
    import onnx

    onnx.load(str(_garbage(tmp_path, "bad.onnx")))


def _safetensors(tmp_path):
    from safetensors.numpy import load_file

    load_file(str(_garbage(tmp_path, "bad.safetensors", b"\x10" + b"\0" * 7 + b"{garbage}")))


def _template_syntax():
    import jinja2

    jinja2.Template("{% if %}")


def _template_security():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    ImmutableSandboxedEnvironment().from_string("{{ ''.__class__.__mro__ }}").render()


def _tokenizer(tmp_path):
    from transformers import AutoTokenizer

    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "added_tokens": [], "model": 5}')
    AutoTokenizer.from_pretrained(str(tmp_path))


def _disk_full():
    with open("/dev/full", "wb", buffering=0) as f:  # write() names no file: found in flight
        f.write(b"x")


def _not_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "file" / "out").mkdir()


ENOSPC = os.strerror(errno.ENOSPC)
EXPECTED = {  # id: (tmp_path -> make, what the line says)
    "smoothrot": (lambda t: _raise(SmoothrotError("model x is bad")), "model x is bad"),
    "value-first-line": (lambda t: _raise(ValueError("bad\nsecond line")), "error: bad"),
    "not-implemented": (lambda t: _raise(NotImplementedError("not yet")), "not yet"),
    "enospc": (
        lambda t: _raise(OSError(errno.ENOSPC, ENOSPC, "/out/model.onnx.data")),
        f"{ENOSPC} (/out/model.onnx.data)",
    ),
    "enospc-in-flight": (lambda t: _disk_full, f"{ENOSPC} (/dev/full)"),
    "erofs": (
        lambda t: _raise(OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/out")),
        "Read-only file system (/ro/out)",
    ),
    "enotdir": (lambda t: lambda: _not_a_directory(t), "Not a directory ("),
    "permission": (lambda t: _raise(PermissionError(13, "Permission denied", "/x")), "denied (/x)"),
    "short-write": (
        lambda t: _raise(OSError("3145728 requested and 14336 written")),
        "wrote 14336 of 3145728 bytes (is the disk full?)",
    ),
    "ort-fail": (lambda t: _ort("Fail", "[ONNXRuntimeError] : 1 : FAIL : x"), "ONNX Runtime: FAIL"),
    "ort-invalid-argument": (
        lambda t: _ort("InvalidArgument", "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : shape"),
        "ONNX Runtime: INVALID_ARGUMENT : shape",
    ),
    "ort-runtime": (
        lambda t: _ort("RuntimeException", "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : x"),
        "ONNX Runtime: RUNTIME_EXCEPTION",
    ),
    "ort-invalid-graph": (lambda t: _ort("InvalidGraph", "bad graph"), "ONNX Runtime: bad graph"),
    "ort-not-implemented": (lambda t: _ort("NotImplemented", "op"), "ONNX Runtime: op"),
    "ort-no-such-file": (lambda t: _ort_load(lambda: t / "none.onnx"), "NO_SUCHFILE"),
    "ort-invalid-protobuf": (
        lambda t: _ort_load(lambda: _garbage(t, "g.onnx")),
        "ONNX Runtime: INVALID_PROTOBUF",
    ),
    "protobuf": (lambda t: lambda: _protobuf(t), "protobuf: Error parsing message"),
    "safetensors": (lambda t: lambda: _safetensors(t), "safetensors: Error while deserializing"),
    "json": (lambda t: lambda: json.loads("{"), "invalid JSON: Expecting property name"),
    "template-syntax": (lambda t: _template_syntax, "chat template: Expected an expression"),
    "template-security": (lambda t: _template_security, "chat template: access to attribute"),
    "tokenizer": (lambda t: lambda: _tokenizer(t), "tokenizer: data did not match"),
    "unicode": (lambda t: lambda: b"\xff".decode(), "not UTF-8 text: 'utf-8' codec"),
    "memory": (lambda t: _raise(MemoryError()), "error: out of memory"),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_each_expected_failure_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path, case):
    make, says = EXPECTED[case]
    argv = _fail_with(monkeypatch, make(tmp_path))
    line = one_line(capsys, argv)
    assert says in line, line
    one_line(capsys, ["-v", *argv])  # -v changes nothing for an expected failure


def test_long_messages_are_cut(capsys, monkeypatch):
    line = one_line(capsys, _fail_with(monkeypatch, _raise(SmoothrotError("x" * 5000))))
    assert len(line) < 400 and line.endswith("…")


@pytest.mark.parametrize("exc", [RuntimeError("boom\nmore"), KeyError("k"), AssertionError()])
def test_a_bug_is_one_line_exit_1_and_its_traceback_with_v(capsys, monkeypatch, exc):
    argv = _fail_with(monkeypatch, _raise(exc))
    line = one_line(capsys, argv, 1, "smoothrot: internal error: ")
    name = type(exc).__name__
    assert line.startswith(f"smoothrot: internal error: {name}: ")
    assert line.endswith("(run with -v for the traceback; please report it)")
    assert "more" not in line
    with pytest.raises(type(exc)):
        main(["-v", *argv])


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)]
)
def test_signals_stop_with_one_line_and_128_plus_n(capsys, monkeypatch, signum, status):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    argv = _fail_with(monkeypatch, lambda: os.kill(os.getpid(), signum))
    says = "smoothrot: interrupted" if signum == signal.SIGINT else f"by {signum.name}"
    assert says in one_line(capsys, argv, status, "smoothrot: ")
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_terminated_raised_anywhere_maps_to_its_signal(capsys, monkeypatch):
    argv = _fail_with(monkeypatch, _raise(Terminated(signal.SIGHUP)))
    assert one_line(capsys, argv, 129, "smoothrot: ") == "smoothrot: terminated by SIGHUP"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "smoothrot: error: the following arguments are required: command"),
        (["frobnicate"], "smoothrot: error: argument command: invalid choice: 'frobnicate'"),
        (["export"], "smoothrot export: error: the following arguments are required: -o"),
        (["export", "-o", "x", "--dtype", "int3"], "smoothrot export: error: argument --dtype"),
        (["export", "-o", "x", "--bogus"], "smoothrot export: error: unrecognized arguments"),
        (["compile", "-o", "x", "--recipe", "w3a3"], "smoothrot compile: error: argument --recipe"),
        (["build", "m", "-o", "x", "--compute-capability", "eighty"], "expected e.g. 80,86,89"),
        (["eval", "m", "--seq", "many"], "smoothrot eval: error: argument --seq: invalid int"),
    ],
)
def test_argparse_errors_are_one_line_pointing_at_help(capsys, argv, says):
    line = one_line(capsys, argv, 2, "smoothrot")
    command = "smoothrot" if not argv or argv[0] == "frobnicate" else f"smoothrot {argv[0]}"
    assert says in line and line.endswith(f"(see {command} --help)"), line


def test_help_still_exits_0(capsys):
    assert main(["--help"]) == 0 and main(["export", "--help"]) == 0
    assert "usage: smoothrot export" in capsys.readouterr().out


def test_the_boundary_imports_none_of_the_libraries_it_knows():
    """Their exception classes are looked up only once something has imported them."""
    code = "import sys, smoothrot.tools.cli; print(sorted(MODULES & set(sys.modules)))"
    modules = {"onnxruntime", "safetensors", "jinja2", "tokenizers", "transformers"}
    run = [sys.executable, "-c", f"MODULES = {modules!r}; {code}"]
    out = subprocess.run(run, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
