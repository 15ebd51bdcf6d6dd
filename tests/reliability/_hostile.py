"""Helpers for the hostile-input tests: damaged copies of the tiny models, and the one check every
refusal must pass through the real command line (exit 2, exactly one stderr line naming the
cause, the input byte-identical afterwards, nothing left where the output would have gone)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from smoothrot.tools.cli import main

__all__ = ["digest", "edit_json", "refused", "writable_copy"]


def digest(root: Path) -> str:
    """A hash of every file (and symlink target) under ``root``, paths included (or of the
    file ``root``)."""
    h = hashlib.sha256()
    if root.is_file():
        return hashlib.sha256(root.read_bytes()).hexdigest()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        if path.is_symlink():
            h.update(b"->" + str(path.readlink()).encode())
        elif path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def writable_copy(src: Path, dst: Path) -> Path:
    """A private copy of a model directory (tests damage copies, never the shared fixtures)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def refused(
    capsys: Any,
    argv: Sequence[str],
    *needles: str,
    inputs: Sequence[Path] = (),
    outs: Path | None = None,
) -> str:
    """Run ``smoothrot argv``: exit status 2 and exactly one stderr line that holds every
    ``needle``; every path in ``inputs`` byte-identical afterwards; ``outs`` (the folder ``-o``
    points into) left empty: no output, no staging or partial directory. Returns the line."""
    before = [digest(p) for p in inputs]
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("smoothrot: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert [digest(p) for p in inputs] == before, "an input changed"
    if outs is not None:
        assert sorted(p.name for p in outs.iterdir()) == [], "something was left beside -o"
    return err[0]
