"""The CLI: user mistakes are one line on stderr, exit status 2, and leave nothing behind."""

import json
import os
import subprocess
import sys

from smoothrot.tools.cli import main


def _fails_cleanly(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smoothrot: error: ") and match in err[0], err


def test_missing_model_dir(capsys, tmp_path):
    _fails_cleanly(capsys, ["eval", str(tmp_path / "nope")], "does not exist")


def test_directory_that_is_not_a_model(capsys, tmp_path):
    _fails_cleanly(capsys, ["eval", str(tmp_path)], "not a smoothrot model directory")
    _fails_cleanly(
        capsys, ["export", "--model", str(tmp_path), "-o", str(tmp_path / "o")], "no config.json"
    )
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture_leaves_no_output(capsys, tmp_path):
    src = tmp_path / "gpt"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    _fails_cleanly(
        capsys,
        ["export", "--model", str(src), "-o", str(tmp_path / "o")],
        "unsupported architecture",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt"]


def test_truncated_gguf(capsys, tmp_path, default_source):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(default_source.path.read_bytes()[:5_000_000])
    _fails_cleanly(capsys, ["export", "--model", str(bad), "-o", str(tmp_path / "o")], "GGUF")
    assert not (tmp_path / "o").exists()


def test_output_that_is_not_ours(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    argv = ["export", "--model", str(tiny_model_dir("llama")), "-o", str(out)]
    capsys.readouterr()  # the tiny model's own save, where this test is the first to make it
    _fails_cleanly(capsys, argv, "not a smoothrot output")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_bad_options(capsys, tmp_path, tiny_export):
    model = str(tiny_export("llama"))
    _fails_cleanly(capsys, ["eval", model, "--windows", "0"], "windows")
    _fails_cleanly(capsys, ["eval", model, "--text", str(tmp_path / "none.txt")], "does not exist")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    _fails_cleanly(capsys, ["eval", model, "--text", str(short)], "text too short")
    _fails_cleanly(capsys, ["generate", model, "--prompt", "x", "--max-new-tokens", "0"], ">= 1")
    _fails_cleanly(capsys, ["calibrate", model, "--tokens", "8", "--seq", "16"], "tokens")
    # argparse's own usage errors: exit 2 too, one line that points at the command's --help
    assert main(["export", "--dtype", "int3", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smoothrot export: error: argument --dtype"), err
    assert err[0].endswith("(see smoothrot export --help)")


def test_eval_json_and_generate(capsys, tiny_export):
    model = str(tiny_export("llama"))
    assert main(["eval", model, "--seq", "32", "--windows", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 2 * 31 and result["ppl"] > 1
    assert main(["generate", model, "--prompt", "Hello", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("Hello")


def test_console_script_exit_code(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "smoothrot")
    proc = subprocess.run([exe, "eval", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("smoothrot: error:") and "Traceback" not in proc.stderr
