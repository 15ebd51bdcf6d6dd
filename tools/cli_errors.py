"""The command line's error boundary: which failures are expected, and the one line each prints.

:func:`run_guarded` runs a command and turns what it raises into an exit status and one line on
stderr: 2 for an expected failure (``smoothrot: error: …``), 130 / 143 / 129 for SIGINT /
SIGTERM / SIGHUP (``smoothrot: interrupted``, ``smoothrot: terminated by SIGTERM``), 1 for a bug
(``smoothrot: internal error: …``; with ``verbose`` the exception propagates, traceback and
all). :class:`OneLineParser` makes argparse's usage errors one line too.

An expected failure is the user's input or the environment, never a bug in smoothrot: a bad
option or model (``SmoothrotError`` and other ``ValueError``), a documented gap
(``NotImplementedError``), the operating system (a missing or read-only path, a full disk), a
file that a library could not read (ONNX Runtime, protobuf, safetensors, JSON, a chat template,
a tokenizer) or memory running out. :func:`describe` gives its one line; anything else is a bug
(``None``). The libraries' exception classes are looked up only in modules already imported (an
exception from a library that was never imported cannot occur), so the command line imports none
of them at start.

:func:`signals_as_exceptions` turns SIGTERM and SIGHUP into :class:`Terminated` in the main
thread, so ``with`` blocks clean up as they do for SIGINT's ``KeyboardInterrupt``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn

from smoothrot.core.errors import Terminated

__all__ = [
    "EXPECTED",
    "OneLineParser",
    "describe",
    "first_line",
    "run_guarded",
    "signal_exit_status",
    "signals_as_exceptions",
]

_MAX_CHARS = 300

# (module, class names, label): the libraries' own exception classes that mean "this file or
# input cannot be used", with the label that says who refused it.
EXPECTED: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "onnxruntime.capi.onnxruntime_pybind11_state",
        (
            "Fail",
            "InvalidArgument",
            "NoSuchFile",
            "NoModel",
            "EngineError",
            "RuntimeException",
            "InvalidProtobuf",
            "ModelLoaded",
            "NotImplemented",
            "InvalidGraph",
            "EPFail",
            "ModelLoadCanceled",
            "ModelRequiresCompilation",
            "NotFound",
            "DeviceReset",
        ),
        "ONNX Runtime",
    ),
    ("google.protobuf.message", ("DecodeError", "EncodeError"), "protobuf"),
    ("safetensors", ("SafetensorError",), "safetensors"),
    ("jinja2.exceptions", ("TemplateError",), "chat template"),
)
# The tokenizers library raises plain ``Exception``; it is recognized by where it was raised.
_TOKENIZER_MODULES = ("tokenizers", "transformers.tokenization")
_SHORT_WRITE = re.compile(r"^(?P<requested>\d+) requested and (?P<written>\d+) written$")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*")
_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s text, at most a few hundred characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 1] + "…"


def _path_text(name: object) -> str:
    return os.fsdecode(name) if isinstance(name, str | bytes | os.PathLike) else str(name)


def _file_in_flight(exc: BaseException) -> str | None:
    """The file a failed read or write had open (``write()`` names none): the innermost open
    file object, by path, among the locals of ``exc``'s traceback."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            name = getattr(value, "name", None) if isinstance(value, io.IOBase) else None
            if isinstance(name, str | bytes | os.PathLike):
                return os.fsdecode(name)
    return None


def _os_error(exc: OSError) -> str:
    what = exc.strerror or first_line(exc)
    short = _SHORT_WRITE.match(what) if exc.errno is None else None  # numpy's tofile says this
    if short:
        what = f"wrote {short['written']} of {short['requested']} bytes (is the disk full?)"
    files = [_path_text(f) for f in (exc.filename, exc.filename2) if f is not None]
    if not files and (exc.errno is not None or short) and (found := _file_in_flight(exc)):
        files = [found]
    return f"{what} ({' -> '.join(files)})" if files else what


def _raised_in(exc: BaseException, prefixes: tuple[str, ...]) -> bool:
    """Whether the innermost Python frame of ``exc``'s traceback is in a module of ``prefixes``."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.startswith(prefixes)


def _library_error(exc: BaseException) -> str | None:
    for module_name, names, label in EXPECTED:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        classes = tuple(c for c in (getattr(module, n, None) for n in names) if isinstance(c, type))
        if classes and isinstance(exc, classes):
            return f"{label}: {_ORT_PREFIX.sub('', first_line(exc))}"
    if type(exc) is Exception and _raised_in(exc, _TOKENIZER_MODULES):
        return f"tokenizer: {first_line(exc)}"
    return None


def describe(exc: BaseException) -> str | None:
    """The one line for an expected failure, or None where ``exc`` is a bug in smoothrot."""
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, MemoryError):
        return f"out of memory ({first_line(exc)})" if str(exc) else "out of memory"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: {first_line(exc)}"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {first_line(exc)}"
    if isinstance(exc, ValueError | NotImplementedError):
        return first_line(exc)
    return _library_error(exc)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_exit_status(signum: int) -> int:
    """The shell's status for a process stopped by ``signum``: 128 + its number."""
    return 128 + int(signum)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (once: a
    repeated signal is ignored while the first one unwinds, so the cleanup finishes); the
    previous handlers come back on exit. Outside the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {s: signal.signal(s, stop) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_guarded(command: Callable[[], int], verbose: bool = False) -> int:
    """``command()``'s exit status, or the status and one line on stderr for what it raised."""
    with signals_as_exceptions():
        try:
            return command()
        except KeyboardInterrupt:
            print("smoothrot: interrupted", file=sys.stderr)
            return signal_exit_status(signal.SIGINT)
        except Terminated as exc:
            print(f"smoothrot: terminated by {_signal_name(exc.signum)}", file=sys.stderr)
            return signal_exit_status(exc.signum)
        except Exception as exc:
            message = describe(exc)
            if message is not None:
                print(f"smoothrot: error: {message}", file=sys.stderr)
                return 2
            if verbose:
                raise
            print(
                f"smoothrot: internal error: {type(exc).__name__}: {first_line(exc)} "
                "(run with -v for the traceback; please report it)",
                file=sys.stderr,
            )
            return 1


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line usage errors, ``smoothrot CMD: error: … (see smoothrot CMD
    --help)``, and exit status 2; its subparsers are of this class too (argparse makes them with
    the parent's class)."""

    def error(self, message: str) -> NoReturn:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        text = lines[0] if lines else "bad arguments"
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, but arguments no parser knows are reported by the command's parser."""
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self._command_parser(namespace).error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace

    def _command_parser(self, namespace: argparse.Namespace) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                parser = action.choices.get(getattr(namespace, action.dest, None))
                if parser is not None:
                    return parser
        return self
