"""Output directories that are never half-written, never someone else's and never an input.

Every command writes its output through :func:`staged_output`:

1. ``-o`` is checked before any work (:func:`check_output_dir`): not a symlink, its parent a
   directory, not the current directory or one of its parents, not equal to, inside or containing
   an input; if it exists it must be ours (it holds the command's marker file, e.g.
   ``smoothrot.json``), so a typo in ``-o`` never deletes a user's files.
2. A lock, ``.NAME.lock`` beside it (``flock``, the holder's pid written in it): a second run on
   the same ``-o`` stops at once, "in use by pid N".
3. Staging directories ``.NAME.partial-*`` left by processes that are gone (their pid is recorded
   in them) are removed, except one that holds a resume journal (``resume.json``): a resumable
   job claims those itself.
4. The command writes into ``.NAME.partial-<pid>-<random>/out`` and keeps its scratch files in
   ``…/work``: beside ``-o``, so on its filesystem, under a hidden name.
5. On success the result is swapped in: ``renameat2(RENAME_EXCHANGE)`` where ``-o`` exists (a
   reader sees the old or the new output, never neither), ``renameat2(RENAME_NOREPLACE)`` where it
   does not (a directory created meanwhile is never replaced). Where ``renameat2`` is missing (not
   Linux, old C library, a filesystem without it) two plain renames do the same with a short
   window in which ``-o`` is absent. Ownership of ``-o`` is checked again at the swap: something
   that appeared or changed there during the run is refused and left as it is.
6. The staging directory (with the replaced output) is removed whatever happens, on errors and on
   ``KeyboardInterrupt`` / ``Terminated`` (the CLI turns SIGINT, SIGTERM and SIGHUP into those).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import MANIFEST_NAME

__all__ = [
    "RESUME_JOURNAL",
    "Staging",
    "atomic_output_dir",
    "check_output_dir",
    "scratch_dir",
    "staged_output",
]

log = logging.getLogger("smoothrot.outdir")
RESUME_JOURNAL = "resume.json"  # a staging directory holding one is never removed automatically
_PID_FILE = "pid"
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


@dataclass(frozen=True)
class Staging:
    out: Path  # write the result here; it becomes -o on success
    work: Path  # scratch space on -o's filesystem, removed at the end


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(
    out: Path, marker: str = MANIFEST_NAME, inputs: Sequence[Path | None] = ()
) -> Path:
    """``out`` made absolute, or a one-line refusal (see the module docstring, step 1)."""
    out = Path(os.path.abspath(out))
    if out.is_symlink():
        raise SmoothrotError(f"output {out} is a symbolic link; give the directory it points to")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise SmoothrotError(f"output {out}: its parent {parent} is not a directory")
    target = _resolved(out)
    if _inside(_resolved(Path.cwd()), target):
        raise SmoothrotError(f"output {out} is the current directory or holds it; refusing")
    for given in inputs:
        if given is None:
            continue
        source = _resolved(Path(given))
        if _inside(target, source) or _inside(source, target):
            relation = (
                "is" if target == source else "is inside" if _inside(target, source) else ("holds")
            )
            raise SmoothrotError(f"output {out} {relation} the input {given}; choose another -o")
    if out.exists() and not (out.is_dir() and (out / marker).is_file()):
        kind = "directory" if out.is_dir() else "file"
        raise SmoothrotError(f"output {out} exists and is not a smoothrot output {kind}; refusing")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Staging directories of ``out`` whose process is gone (none is running: we hold the lock)."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        if not stale.is_dir() or stale.is_symlink() or (stale / RESUME_JOURNAL).exists():
            continue
        try:
            pid = int((stale / _PID_FILE).read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid == os.getpid() or (pid and _pid_alive(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    path = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SmoothrotError(f"output {out} is in use by pid {holder}") from None
        try:  # the file we locked must still be the one at the path (a holder may unlink it)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the system has no such call."""
    libc = ctypes.CDLL(None, use_errno=True)
    call = getattr(libc, "renameat2", None)
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _ours(out: Path, marker: str) -> bool:
    return out.is_dir() and not out.is_symlink() and (out / marker).is_file()


def _swap_in(result: Path, out: Path, marker: str, staging: Path) -> None:
    if os.path.lexists(out):
        if not _ours(out, marker):
            raise SmoothrotError(
                f"output {out} appeared or changed during the run and is not a smoothrot output; "
                "refusing"
            )
        if _renameat2(result, out, _RENAME_EXCHANGE):
            if not _ours(result, marker):  # it changed between the check and the swap: undo
                _renameat2(result, out, _RENAME_EXCHANGE)
                raise SmoothrotError(f"output {out} changed during the run; refusing")
            return
        old = staging / "old"
        out.rename(old)
        try:
            result.rename(out)
        except OSError:
            old.rename(out)
            raise
        return
    try:
        if _renameat2(result, out, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise SmoothrotError(f"output {out} appeared during the run; refusing") from None
    if os.path.lexists(out):
        raise SmoothrotError(f"output {out} appeared during the run; refusing")
    result.rename(out)


def _resumable(out: Path) -> Path | None:
    """The newest staging directory of ``out`` holding a resume journal whose process is gone."""
    found = []
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        if stale.is_dir() and not stale.is_symlink() and (stale / RESUME_JOURNAL).is_file():
            try:
                pid = int((stale / _PID_FILE).read_text().strip())
            except (OSError, ValueError):
                pid = 0
            if not (pid and pid != os.getpid() and _pid_alive(pid)):
                found.append(stale)
    return max(found, key=lambda p: (p / RESUME_JOURNAL).stat().st_mtime_ns, default=None)


@contextlib.contextmanager
def staged_output(
    out: Path,
    marker: str = MANIFEST_NAME,
    inputs: Sequence[Path | None] = (),
    resumable: bool = False,
    resume: bool = False,
) -> Iterator[Staging]:
    """Yield a :class:`Staging` whose ``out`` becomes ``out`` only if the block succeeds.

    ``resumable``: a block that fails after writing ``RESUME_JOURNAL`` into the staging root
    (``Staging.work.parent``) leaves the staging directory in place; ``resume`` takes the newest
    such directory of ``out`` up again instead of starting a new one."""
    out = check_output_dir(out, marker, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        _remove_stale(out)
        previous = _resumable(out) if resume else None
        if previous is not None:
            staging = previous
            log.info("resuming the interrupted run in %s", staging)
            shutil.rmtree(staging / "out", ignore_errors=True)
        else:
            prefix = f".{out.name}.partial-{os.getpid()}-"
            staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
        keep = False
        try:
            (staging / _PID_FILE).write_text(f"{os.getpid()}\n")
            result, work = staging / "out", staging / "work"
            result.mkdir()
            work.mkdir(exist_ok=True)
            try:
                yield Staging(result, work)
            except BaseException:
                keep = resumable and (staging / RESUME_JOURNAL).is_file()
                if keep:
                    log.warning("interrupted; rerun with --resume to go on from %s", staging)
                raise
            _swap_in(result, out, marker, staging)
        finally:
            if not keep:
                shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(
    out: Path, marker: str = MANIFEST_NAME, inputs: Sequence[Path | None] = ()
) -> Iterator[Path]:
    """:func:`staged_output` for a writer that needs no scratch space: yields the result dir."""
    with staged_output(out, marker, inputs) as stage:
        yield stage.out


@contextlib.contextmanager
def scratch_dir(out: Path) -> Iterator[Path]:
    """A scratch directory beside ``out`` for work before its staging starts (e.g. an export):
    hidden, on ``out``'s filesystem, stamped with this pid so a later run removes it if this
    process dies; removed at the end."""
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.partial-{os.getpid()}-"
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    try:
        (path / _PID_FILE).write_text(f"{os.getpid()}\n")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
