"""Packaged models: located without importing their packages, chunks assembled once into the
cache and checked against the published sha256, never a half-assembled file."""

import hashlib

import pytest

from smoothrot.compiler.modeldir.packaged import PACKAGED_MODELS, PackagedModel, cache_dir
from smoothrot.compiler.modeldir.sources import SourceKind, resolve_source
from smoothrot.core.errors import SmoothrotError

CHUNKS = [b"GGUF-first-part-" * 1000, b"second" * 777, b"third"]


@pytest.fixture
def chunked(tmp_path, monkeypatch) -> PackagedModel:
    """Three chunk packages whose ``__init__`` would fail if imported."""
    site = tmp_path / "site"
    for i, data in enumerate(CHUNKS):
        package = site / f"fake_chunk_{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise SystemExit('imported')\n")
        (package / "data" / f"m.part{i}").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SMOOTHROT_CACHE", str(tmp_path / "cache"))
    return PackagedModel(
        name="fake",
        file_name="m.gguf",
        chunks=tuple((f"fake_chunk_{i}", f"data/m.part{i}") for i in range(len(CHUNKS))),
        install="pip install fake",
        sha256=hashlib.sha256(b"".join(CHUNKS)).hexdigest(),
    )


def test_chunks_assemble_once_into_the_cache(chunked):
    path = chunked.locate()
    assert path == cache_dir() / "m.gguf" and path.read_bytes() == b"".join(CHUNKS)
    mtime = path.stat().st_mtime_ns
    assert chunked.locate() == path and path.stat().st_mtime_ns == mtime  # reused as it is
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.gguf"]


def test_a_damaged_cached_file_is_assembled_again(chunked):
    path = chunked.locate()
    path.write_bytes(b"truncated")
    assert chunked.locate().read_bytes() == b"".join(CHUNKS)


def test_a_wrong_digest_is_refused_and_leaves_nothing(chunked):
    bad = PackagedModel(**{**chunked.__dict__, "sha256": "0" * 64})
    with pytest.raises(SmoothrotError, match="assembles to sha256 .* not the published .*pip"):
        bad.locate()
    assert not cache_dir().exists() or not list(cache_dir().iterdir())


def test_a_missing_package_or_chunk_names_the_install_command(chunked, tmp_path):
    gone = PackagedModel(**{**chunked.__dict__, "chunks": (("no_such_pkg_x", "a"),)})
    with pytest.raises(SmoothrotError, match="no_such_pkg_x is not installed: pip install fake"):
        gone.locate()
    (tmp_path / "site" / "fake_chunk_1" / "data" / "m.part1").unlink()
    with pytest.raises(SmoothrotError, match="incomplete: .*m.part1 is missing"):
        chunked.locate()


def test_a_packaged_name_resolves_unless_a_path_of_that_name_exists(
    tmp_path, monkeypatch, default_source
):
    monkeypatch.chdir(tmp_path)
    smollm2 = PACKAGED_MODELS["smollm2-135m"]
    source = resolve_source(smollm2.name)
    assert (source.kind, source.path, source.architecture) == (
        SourceKind.PACKAGED,
        default_source.path,
        "llama",
    )
    (tmp_path / smollm2.name).mkdir()  # the user's own directory wins
    with pytest.raises(SmoothrotError, match="not a Hugging Face model directory"):
        resolve_source(smollm2.name)
    with pytest.raises(SmoothrotError, match="does not exist .*packaged models: .*gemma3-270m"):
        resolve_source("gemma3-27m")
