"""Atomic output directories: build in a temporary sibling, rename into place when complete.

A directory that exists is replaced only if it is ours (it holds our marker file,
``smoothrot.json`` for models); anything
else is refused, so a typo in ``-o`` never deletes a user's files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import MANIFEST_NAME

__all__ = ["atomic_output_dir", "check_output_dir"]


def check_output_dir(out: Path, marker: str = MANIFEST_NAME) -> None:
    """Refuse an output path that exists and is not ours (has no ``marker`` file)."""
    if out.exists() and not (out.is_dir() and (out / marker).is_file()):
        kind = "directory" if out.is_dir() else "file"
        raise SmoothrotError(f"output {out} exists and is not a smoothrot output {kind}; refusing")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output_dir(out: Path, marker: str = MANIFEST_NAME) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds."""
    out = Path(out)
    check_output_dir(out, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / "x")
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
