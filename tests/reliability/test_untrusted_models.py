"""Model directories as untrusted input, through the real command line on the tiny models: no
code of a model directory ever runs (auto_map refused, trust_remote_code=False, pickles only on
request and then weights_only), no code is copied into an output, GGUF headers that claim more
data than the file holds are refused, and smoothrot's ONNX Runtime library is only ever loaded
from its own build cache, never from a model directory."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import load_file

from smoothrot.compiler.modeldir.model_dir import COPIED_FILES, copy_tokenizer_files, save_tokenizer
from smoothrot.compiler.modeldir.sources import load_torch_model, resolve_source
from smoothrot.compiler.runtime.ort_runner import load_tokenizer
from smoothrot.ortops import library
from smoothrot.ortops.spec import DOMAIN as ORTOPS_DOMAIN
from smoothrot.tools.cli import main
from tests.reliability._hostile import digest, edit_json, refused, writable_copy

CODE_FILES = ("evil.py", "modeling_evil.py", "tokenization_evil.py", "configuration_evil.py")
MODEL_FILES = {"model.onnx", "model.onnx.data", "smoothrot.json"}


def _plant_code(directory: Path, marker: Path) -> None:
    """Python files that write ``marker`` the moment anything imports them."""
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('the code ran')\n"
    for name in CODE_FILES:
        (directory / name).write_text(code)


class _Payload:
    """Unpickling this runs Python (writes the marker): what a hostile .bin carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('ran')",)


@pytest.fixture
def model(tiny_model_dir, tmp_path) -> Path:
    return writable_copy(tiny_model_dir("llama"), tmp_path / "model")


@pytest.fixture
def outs(tmp_path) -> Path:
    """The folder every ``-o`` points into: it must stay empty after a refusal."""
    (tmp_path / "outs").mkdir()
    return tmp_path / "outs"


@pytest.fixture
def yes(monkeypatch) -> None:
    """Answer 'y' to transformers' 'run the custom code?' prompt, as `echo y |` did."""
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 100))


@pytest.mark.parametrize(
    ("config", "auto_map"),
    [
        ("config.json", {"AutoConfig": "configuration_evil.C", "AutoModelForCausalLM": "evil.M"}),
        ("tokenizer_config.json", {"AutoTokenizer": ["tokenization_evil.T", "evil.T"]}),
    ],
)
def test_an_auto_map_is_refused_and_its_code_never_runs(capsys, yes, model, outs, tmp_path,
                                                        config, auto_map):  # fmt: skip
    marker = tmp_path / "MARKER"
    _plant_code(model, marker)
    edit_json(model / config, lambda c: {**c, "auto_map": auto_map})
    for argv in (
        ["export", "--model", str(model), "-o", str(outs / "o")],
        ["compile", "--model", str(model), "--recipe", "w4a16", "-o", str(outs / "q")],
        ["analyze", "--model", str(model), "-o", str(outs / "a")],
    ):
        refused(capsys, argv, str(model / config), "auto_map", inputs=[model], outs=outs)
    assert not marker.exists()


def test_an_export_with_an_auto_map_is_refused_by_every_reader(capsys, yes, tiny_export, outs,
                                                               tmp_path):  # fmt: skip
    marker = tmp_path / "MARKER"
    export = writable_copy(tiny_export("llama"), tmp_path / "export")
    _plant_code(export, marker)  # what an older smoothrot's export of such a model held
    auto_map = {"AutoTokenizer": ["tokenization_evil.T", "tokenization_evil.T"]}
    edit_json(export / "tokenizer_config.json", lambda c: {**c, "auto_map": auto_map})
    where = str(export / "tokenizer_config.json")
    for argv in (
        ["eval", str(export), "--windows", "1", "--seq", "16"],
        ["generate", str(export), "--prompt", "Hi", "--max-new-tokens", "2"],
        ["calibrate", str(export), "-o", str(outs / "c"), "--tokens", "64", "--seq", "32"],
    ):
        refused(capsys, argv, where, "auto_map", inputs=[export], outs=outs)
    assert not marker.exists()


def test_every_transformers_load_passes_trust_remote_code_false(monkeypatch, tiny_model_dir,
                                                                tiny_export):  # fmt: skip
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls: list[tuple[str, object]] = []
    for cls in (AutoTokenizer, AutoModelForCausalLM):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append((_name, kwargs.get("trust_remote_code", "not passed")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_torch_model(resolve_source(tiny_model_dir("llama")))
    load_tokenizer(tiny_export("llama"))
    assert {name for name, _ in calls} == {"AutoTokenizer", "AutoModelForCausalLM"}
    assert all(trust is False for _, trust in calls), calls


def _pickle_only(model: Path, state: dict) -> None:
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")


def test_pickles_are_refused_unless_allowed_and_then_load_weights_only(capsys, model, outs,
                                                                       tmp_path):  # fmt: skip
    marker = tmp_path / "MARKER"
    weights = load_file(model / "model.safetensors")
    _pickle_only(model, {**weights, "model.embed_tokens.weight": _Payload(marker)})
    export = ["export", "--model", str(model), "-o", str(outs / "o")]
    bin_file = str(model / "pytorch_model.bin")
    refused(capsys, export, bin_file, "--allow-pickle", inputs=[model], outs=outs)
    allowed = [*export, "--allow-pickle"]
    refused(capsys, allowed, bin_file, "weights_only", inputs=[model], outs=outs)
    assert not marker.exists()


def test_an_allowed_pickle_of_plain_tensors_loads_and_safetensors_always_win(model, tmp_path):
    marker = tmp_path / "MARKER"
    weights = load_file(model / "model.safetensors")
    torch.save({"x": _Payload(marker)}, model / "pytorch_model.bin")  # beside the safetensors
    loaded, _ = load_torch_model(resolve_source(model), allow_pickle=True)
    assert not marker.exists()  # the .bin was never opened
    _pickle_only(model, weights)
    loaded, _ = load_torch_model(resolve_source(model), allow_pickle=True)
    for name, tensor in loaded.state_dict().items():
        if name in weights:
            assert torch.equal(tensor, weights[name]), name


def test_no_code_or_library_of_a_model_directory_reaches_the_export(capsys, model, outs,
                                                                    tmp_path):  # fmt: skip
    marker = tmp_path / "MARKER"
    _plant_code(model, marker)
    (model / "libsmoothrot_ortops.so").write_bytes(b"\x7fELF not really")
    out = outs / "o"
    assert main(["export", "--model", str(model), "-o", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names - MODEL_FILES <= set(COPIED_FILES), names
    assert not [n for n in names if n.endswith((".py", ".so"))] and not marker.exists()
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())


def test_tokenizer_saving_and_copying_keep_data_files_only(tmp_path):
    class CustomTokenizer:  # a tokenizer whose save_pretrained writes its own code, as HF's do
        def save_pretrained(self, where: str) -> None:
            (Path(where) / "tokenizer.json").write_text("{}")
            (Path(where) / "tokenization_evil.py").write_text("raise SystemExit")
            config = {"auto_map": {"AutoTokenizer": ["tokenization_evil.T", None]}, "x": 1}
            (Path(where) / "tokenizer_config.json").write_text(json.dumps(config))

    saved = tmp_path / "saved"
    saved.mkdir()
    save_tokenizer(CustomTokenizer(), saved)
    assert sorted(p.name for p in saved.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert json.loads((saved / "tokenizer_config.json").read_text()) == {"x": 1}
    (saved / "evil.py").write_text("raise SystemExit")
    (saved / "tokenizer_config.json").write_text(json.dumps({"auto_map": {}, "y": 2}))
    copied = tmp_path / "copied"
    copied.mkdir()
    copy_tokenizer_files(saved, copied)
    assert sorted(p.name for p in copied.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert json.loads((copied / "tokenizer_config.json").read_text()) == {"y": 2}


def _tiny_gguf(path: Path) -> bytes:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.ones((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def test_a_gguf_whose_header_claims_more_data_than_the_file_is_refused(capsys, outs, tmp_path):
    import struct

    good = tmp_path / "good.gguf"
    data = _tiny_gguf(good)
    assert resolve_source(good).architecture == "llama"  # the intact file is accepted
    dims_at = data.index(b"token_embd.weight") + len(b"token_embd.weight") + 4
    big = bytearray(data)
    struct.pack_into("<Q", big, dims_at + 8, 1 << 20)  # 2^20 rows claimed, 8 stored
    for name, content in (("big.gguf", bytes(big)), ("cut.gguf", data[:-16])):
        bad = tmp_path / name
        bad.write_bytes(content)
        argv = ["export", "--model", str(bad), "-o", str(outs / "o")]
        refused(capsys, argv, str(bad), "GGUF", inputs=[tmp_path / name], outs=outs)


class _Options:
    """Records what would be loaded into an ONNX Runtime session."""

    def __init__(self) -> None:
        self.libraries: list[Path] = []

    def register_custom_ops_library(self, path: str) -> None:
        self.libraries.append(Path(path))


def test_the_ortops_library_is_registered_only_from_its_build_cache(monkeypatch, model,
                                                                   tmp_path):  # fmt: skip
    cache = tmp_path / "cache"
    monkeypatch.setenv("SMOOTHROT_ORTOPS_DIR", str(cache))
    built = library.cache_dir() / library._build_key() / library.LIBRARY_NAME
    for planted in (model / library.LIBRARY_NAME, model / built.relative_to(cache)):
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_bytes(b"\x7fELF planted")
    monkeypatch.chdir(model)  # a model directory as the working directory changes nothing
    options = _Options()
    assert library.register(options, build=False) is False and options.libraries == []
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\x7fELF ours")
    assert library.register(options, build=False) is True
    assert [p.resolve() for p in options.libraries] == [built.resolve()]
    assert options.libraries[0].resolve().is_relative_to(cache.resolve())


def test_a_model_needing_our_ops_never_loads_a_library_from_its_directory(capsys, monkeypatch,
                                                                         tiny_export,
                                                                         tmp_path):  # fmt: skip
    if not library.available():
        pytest.skip("smoothrot's ONNX Runtime library is not built here (make setup builds it)")
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to build the planted library")
    marker = tmp_path / "MARKER"
    export = writable_copy(tiny_export("llama"), tmp_path / "export")
    source = tmp_path / "evil.cc"
    source.write_text(
        "#include <cstdio>\n__attribute__((constructor)) static void ran() {\n"
        f'  std::FILE* f = std::fopen("{marker}", "w"); if (f) std::fclose(f); }}\n'
    )
    planted = export / library.LIBRARY_NAME
    subprocess.run(["g++", "-shared", "-fPIC", str(source), "-o", str(planted)], check=True)
    key_dir = export / library._build_key()
    key_dir.mkdir()
    shutil.copy(planted, key_dir / library.LIBRARY_NAME)
    proto = onnx.load(str(export / "model.onnx"), load_external_data=False)
    proto.opset_import.append(onnx.helper.make_opsetid(ORTOPS_DOMAIN, 1))  # "needs our ops"
    onnx.save(proto, str(export / "model.onnx"))
    monkeypatch.chdir(export)
    before = digest(export)
    assert main(["eval", str(export), "--windows", "1", "--seq", "16"]) == 0
    assert not marker.exists() and digest(export) == before
