"""The resume journal of a streamed compile: what is finished, so a killed compile goes on.

``resume.json`` sits at the root of the compile's staging directory (which ``staged_output``
then keeps when the compile does not finish, and hands back to ``--resume``). It records the
config and the source's identity (every weight file's name, size and mtime), and each finished
layer: the residual names of its saved segment, its passes' details and timings. The streams
after the last finished layer are ``work/streams.npz``. A journal written for another config or
another model is refused by name, never continued.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoothrot.core.errors import SmoothrotError

__all__ = ["Journal", "source_identity"]

_FORMAT, _VERSION = "smoothrot-stream-journal", 1


def source_identity(path: Path) -> list[list[Any]]:
    """Name, size and mtime of the source file or of every weight/config file of a directory."""
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir()
        if p.is_file() and p.suffix in (".safetensors", ".json", ".bin", ".gguf")
    )  # fmt: skip
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


@dataclass
class Journal:
    path: Path
    config: dict[str, Any]
    source: list[list[Any]]
    layers: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)

    def save(self) -> None:
        data = {
            "format": _FORMAT,
            "version": _VERSION,
            "config": self.config,
            "source": self.source,
            "layers": self.layers,
            "stages": self.stages,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps(data, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    @classmethod
    def open(cls, path: Path, config: dict[str, Any], source: list[list[Any]]) -> Journal:
        """The journal at ``path`` if it exists (checked against ``config`` and ``source``),
        else a new one."""
        if not path.is_file():
            return cls(path, config, source)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SmoothrotError(f"{path} is not a readable resume journal: {exc}") from exc
        if data.get("format") != _FORMAT or data.get("version") != _VERSION:
            raise SmoothrotError(f"{path} is not a resume journal of this smoothrot version")
        where = path.parent
        if data.get("config") != config:
            raise SmoothrotError(
                f"the interrupted compile in {where} used another config; run it with that "
                "config, or remove the directory to start over"
            )
        if data.get("source") != source:
            raise SmoothrotError(
                f"the model changed since the interrupted compile in {where} started; remove "
                "the directory to start over"
            )
        return cls(path, config, source, list(data["layers"]), list(data.get("stages", [])))
