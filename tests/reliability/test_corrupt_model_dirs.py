"""Damaged model directories, through the real command line on the tiny models: each is one line
``smoothrot: error: …`` naming the file at fault (exit 2), never a traceback; the input stays
byte-identical and nothing is left where the output would have gone.

Hugging Face directories: empty or truncated safetensors, config dimensions that do not match
the weights, no tokenizer (every architecture), a corrupt tokenizer.json. Exports: a chat
template the jinja sandbox blocks, a manifest with wrong, listed or string dimensions, missing
or truncated ``model.onnx.data``, random bytes as ``model.onnx``, external-data locations that
leave the directory (absolute, ``..``, a symlink)."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from smoothrot.tools.cli import main
from tests.reliability._hostile import edit_json, refused, writable_copy

Damage = Callable[[Path], None]
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
_CAL = ["--tokens", "64", "--seq", "32"]
_FAST = ["--algorithm", "rtn", "--group-size", "32", "--no-eval"]
_W4A16 = ["--recipe", "w4a16", *_FAST]


@pytest.fixture
def outs(tmp_path) -> Path:
    (tmp_path / "outs").mkdir()
    return tmp_path / "outs"


@pytest.fixture(scope="module")
def qdq(tiny_export, tmp_path_factory) -> Path:
    """A compiled (INT4 QDQ) tiny model, compiled from an export holding planted code."""
    root = tmp_path_factory.mktemp("qdq")
    export = writable_copy(tiny_export("llama"), root / "export")
    (export / "evil.py").write_text("raise SystemExit('imported')")
    (export / "libevil.so").write_bytes(b"\x7fELF")
    out = root / "qdq"
    assert main(["compile", "--onnx", str(export), "-o", str(out), *_W4A16]) == 0
    return out


def test_a_compile_carries_no_code_of_its_input(qdq):
    assert not [p.name for p in qdq.rglob("*") if p.suffix in (".py", ".so")]


def _cut(name: str, keep: float) -> Damage:
    def damage(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: int(len(data) * keep)])

    return damage


def _config(**changes: int) -> Damage:
    return lambda d: edit_json(d / "config.json", lambda c: {**c, **changes})


def _no_tokenizer(d: Path) -> None:
    for name in TOKENIZER:
        (d / name).unlink(missing_ok=True)


HF_DAMAGE: dict[str, tuple[Damage, str, str]] = {
    "empty safetensors": (_cut("model.safetensors", 0), "model.safetensors", "empty"),
    "truncated safetensors": (_cut("model.safetensors", 0.5), "model.safetensors", "truncated"),
    "hidden_size edited": (_config(hidden_size=128), "config.json", "[49152, 128] by the config"),
    "more layers than weights": (_config(num_hidden_layers=3), "config.json", "model.layers.2"),
    "fewer layers than weights": (_config(num_hidden_layers=1), "config.json", "model.layers.1"),
    "intermediate_size edited": (_config(intermediate_size=100), "config.json", "mlp"),
    "corrupt tokenizer.json": (
        lambda d: (d / "tokenizer.json").write_text('{"model": '),
        "tokenizer.json",
        "not a valid tokenizer",
    ),
}


@pytest.mark.parametrize("case", list(HF_DAMAGE))
def test_a_damaged_hugging_face_directory_is_one_line(capsys, tiny_model_dir, outs, tmp_path,
                                                      case):  # fmt: skip
    damage, file, cause = HF_DAMAGE[case]
    model = writable_copy(tiny_model_dir("llama"), tmp_path / "model")
    damage(model)
    argv = ["export", "--model", str(model), "-o", str(outs / "o")]
    refused(capsys, argv, str(model / file), cause, inputs=[model], outs=outs)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_a_directory_without_tokenizer_is_refused_before_any_work(capsys, tiny_model_dir, outs,
                                                                  tmp_path, arch):  # fmt: skip
    model = writable_copy(tiny_model_dir(arch), tmp_path / "model")
    _no_tokenizer(model)
    for argv in (
        ["export", "--model", str(model), "-o", str(outs / "o")],
        ["compile", "--model", str(model), "--recipe", "w4a16", "-o", str(outs / "q")],
    ):
        refused(capsys, argv, str(model), "has no tokenizer", inputs=[model], outs=outs)


@pytest.fixture
def export(tiny_export, tmp_path) -> Path:
    return writable_copy(tiny_export("llama"), tmp_path / "export")


def _readers(d: Path, outs: Path) -> dict[str, list[str]]:
    return {
        "eval": ["eval", str(d), "--windows", "1", "--seq", "16"],
        "generate": ["generate", str(d), "--prompt", "Hi", "--max-new-tokens", "2"],
        "calibrate": ["calibrate", str(d), "-o", str(outs / "c"), *_CAL],
        "analyze": ["analyze", "--onnx", str(d), "-o", str(outs / "a"), *_CAL],
        "compile": ["compile", "--onnx", str(d), "-o", str(outs / "q"), *_W4A16],
        "lower": ["lower", str(d), "-o", str(outs / "l"), "--no-eval"],
        "build": ["build", str(d), "-o", str(outs / "b"), "--no-eval"],
    }


def test_a_chat_template_the_sandbox_blocks_is_one_line(capsys, export):
    (export / "chat_template.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    argv = ["eval", str(export), "--system-prompt", "--windows", "1", "--seq", "16"]
    refused(capsys, argv, str(export / "chat_template.jinja"), "SecurityError", inputs=[export])


def _dims(**changes: object) -> Callable[[dict], dict]:
    return lambda m: {**m, "dims": {**m["dims"], **changes}}


MANIFESTS: dict[str, tuple[Callable[[object], object], str]] = {
    "a list": (lambda m: [m], "not an object"),
    "string dims": (_dims(layers="2"), "dims.layers must be a positive integer"),
    "negative dims": (_dims(heads=-4), "dims.heads must be a positive integer"),
    "boolean dims": (_dims(vocab=True), "dims.vocab must be a positive integer"),
    "a missing dim": (lambda m: {**m, "dims": {"hidden": 64}}, "dims must have exactly"),
    "dims not an object": (lambda m: {**m, "dims": [64]}, "dims must be an object"),
    "heads not a multiple of kv_heads": (_dims(heads=3), "not a multiple of kv_heads"),
    "layers not the graph's": (_dims(layers=3), "4 past inputs for 3 layers"),
    "kv_heads not the graph's": (_dims(kv_heads=1), "kv_heads is 1 but past.0.key has 2"),
    "head_dim not the graph's": (_dims(head_dim=8), "head_dim is 8 but past.0.key has 16"),
    "hidden not the graph's": (_dims(hidden=65), "vocab x hidden is 49152 x 65"),
    "vocab not the graph's": (_dims(vocab=100), "vocab is 100 but logits have 49152"),
    "a model file outside": (lambda m: {**m, "model_file": "../model.onnx"}, "model_file"),
    "inputs not names": (lambda m: {**m, "inputs": [1, 2]}, "inputs must be a list of names"),
    "weights not names": (lambda m: {**m, "weights": {"lm_head": 1}}, "weights must map"),
}


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_a_bad_manifest_is_one_line(capsys, export, outs, case):
    change, cause = MANIFESTS[case]
    edit_json(export / "smoothrot.json", change)
    readers = _readers(export, outs)
    for command in ("eval", "generate"):
        refused(capsys, readers[command], "smoothrot.json", cause, inputs=[export], outs=outs)


def _random_bytes(d: Path) -> None:
    (d / "model.onnx").write_bytes(random.Random(0).randbytes(4096))


GRAPH_DAMAGE: dict[str, tuple[Damage, str, str]] = {
    "truncated data": (_cut("model.onnx.data", 0.5), "model.onnx.data", "is truncated"),
    "missing data": (lambda d: (d / "model.onnx.data").unlink(), "model.onnx.data", "missing"),
    "random bytes as model.onnx": (_random_bytes, "model.onnx", "not a readable ONNX model"),
}
EXPORT_READERS = ("eval", "generate", "calibrate", "analyze", "compile")


@pytest.mark.parametrize(
    ("case", "command"),
    [pytest.param(case, command) for case in GRAPH_DAMAGE for command in EXPORT_READERS],
)
def test_a_damaged_graph_is_one_line_naming_the_file(capsys, export, outs, case, command):
    damage, file, cause = GRAPH_DAMAGE[case]
    damage(export)
    argv = _readers(export, outs)[command]
    refused(capsys, argv, str(export / file), cause, inputs=[export], outs=outs)


@pytest.mark.parametrize("command", ["lower", "build"])
@pytest.mark.parametrize("case", list(GRAPH_DAMAGE))
def test_a_damaged_compiled_graph_is_one_line_naming_the_file(capsys, request, qdq, outs,
                                                              tmp_path, case,
                                                              command):  # fmt: skip
    if command == "build":
        request.getfixturevalue("rtx")  # skips without TensorRT-RTX
    model = writable_copy(qdq, tmp_path / "qdq")
    damage, file, cause = GRAPH_DAMAGE[case]
    damage(model)
    refused(capsys, _readers(model, outs)[command], str(model / file), cause, inputs=[model],
            outs=outs)  # fmt: skip


def _relocate(d: Path, location: str) -> None:
    """Point every external tensor of ``d``'s graph at ``location``."""
    proto = onnx.load(str(d / "model.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(d / "model.onnx"))


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "symlink"])
@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_external_data_outside_the_directory_is_refused(capsys, export, outs, tmp_path, how,
                                                        command):  # fmt: skip
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(export / "model.onnx.data", outside / "model.onnx.data")  # the real bytes
    if how == "absolute":
        _relocate(export, str(outside / "model.onnx.data"))
        cause = f"location {str(outside / 'model.onnx.data')!r} is not a relative path"
    elif how == "dot-dot":
        _relocate(export, os.path.join("..", "outside", "model.onnx.data"))
        cause = "leaves the model directory"
    else:
        (export / "model.onnx.data").symlink_to(outside / "model.onnx.data")
        cause = "resolves outside the model directory"
    argv = _readers(export, outs)[command]
    line = refused(capsys, argv, str(export), "external data of tensor", cause,
                   inputs=[export, outside], outs=outs)  # fmt: skip
    assert "refusing" in line
