"""Build and register smoothrot's ONNX Runtime custom-op library (the ops: :mod:`.spec`).

The C++ source ships with the package; it is compiled on first use with g++ against the ONNX
Runtime 1.21 C API headers from Debian's ``libonnxruntime-dev`` (fetched once and verified by
sha256) and cached under :func:`cache_dir`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import onnxruntime as ort

from smoothrot.core.errors import SmoothrotError
from smoothrot.ortops.spec import (
    DOMAIN,
    OP_TYPE_ATTENTION,
    OP_TYPE_PER_IC,
    OP_TYPE_PER_OC,
    OP_TYPE_ROTATION,
)

__all__ = [
    "CXXFLAGS",
    "OrtOpsUnavailable",
    "available",
    "cache_dir",
    "library_path",
    "main",
    "register",
]

HEADERS_URL = (
    "https://deb.debian.org/debian/pool/main/o/onnxruntime/"
    "libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb"
)
HEADERS_SHA256 = "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
HEADERS_VERSION = "1.21.0"
CXX = "g++"
CXXFLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden")
LIBRARY_NAME = "libsmoothrot_ortops.so"
_SOURCE_DIR = Path(__file__).resolve().parent
_SOURCES = (
    "matmul_int4_per_ic.cc",
    "int4_per_ic_kernels.h",
    "int4_per_ic_gemm.h",
    "kron_rotation.h",
    "ort_common.h",
    "grouped_attention.h",
)


class OrtOpsUnavailable(SmoothrotError):
    """The custom-op library is not built and cannot be built here (the message says why)."""


def cache_dir() -> Path:
    """Where headers and built libraries live: ``$SMOOTHROT_ORTOPS_DIR`` or the user cache."""
    env = os.environ.get("SMOOTHROT_ORTOPS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "smoothrot" / "ortops"


def _cxxflags() -> tuple[str, ...]:
    """CXXFLAGS plus ``$SMOOTHROT_ORTOPS_CXXFLAGS`` (for example ``-mno-avxvnni -mno-avx512vnni``
    builds the AVX2 kernels on a CPU with VNNI; the flags are part of the build key)."""
    return (*CXXFLAGS, *os.environ.get("SMOOTHROT_ORTOPS_CXXFLAGS", "").split())


def _build_key() -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode() + b"\0" + (_SOURCE_DIR / name).read_bytes() + b"\0")
    h.update(" ".join((CXX, *_cxxflags())).encode() + b"\0" + HEADERS_VERSION.encode())
    h.update(b"\0" + _cpu_identity().encode())  # -march=native: one build per kind of CPU
    return h.hexdigest()[:16]


def _cpu_identity() -> str:
    """The machine and its CPU's model and flags (Linux); a shared cache must not hand a library
    built for one CPU to another."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    wanted = ("model name", "flags")
    first = {ln.split(":")[0].strip(): ln for ln in reversed(info) if ":" in ln}
    return platform.machine() + "".join(first.get(k, "") for k in wanted)


def library_path(build: bool = True) -> Path:
    """The compiled library, built (headers fetched, g++ run) when missing and ``build``."""
    target = cache_dir() / _build_key() / LIBRARY_NAME
    if target.is_file():
        return target
    if not build:
        raise OrtOpsUnavailable(f"ORT custom-op library not built ({target} missing)")
    include = _headers()
    if shutil.which(CXX) is None:
        raise OrtOpsUnavailable(f"cannot build the ORT custom-op library: no {CXX} on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [CXX, *_cxxflags(), "-I", str(include), "-I", str(_SOURCE_DIR)]
    cmd += [str(_SOURCE_DIR / _SOURCES[0]), "-o", str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if "error" in ln] or [""]
            raise OrtOpsUnavailable(f"compiling the ORT custom-op library failed: {lines[0]}")
        os.replace(tmp, target)  # atomic: concurrent builders each install a complete file
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _headers() -> Path:
    """Directory holding ``onnxruntime_cxx_api.h`` (downloaded and extracted once)."""
    root = cache_dir() / f"onnxruntime-headers-{HEADERS_VERSION}"
    if (root / "onnxruntime_cxx_api.h").is_file():
        return root
    try:
        with urllib.request.urlopen(HEADERS_URL, timeout=60) as resp:
            deb = resp.read()
    except OSError as exc:
        msg = f"cannot download ONNX Runtime headers ({HEADERS_URL}): {exc}"
        raise OrtOpsUnavailable(msg) from exc
    digest = hashlib.sha256(deb).hexdigest()
    if digest != HEADERS_SHA256:
        raise OrtOpsUnavailable(f"ONNX Runtime headers sha256 mismatch: got {digest}")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".headers-", dir=root.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(_ar_member(deb, "data.tar.xz")), mode="r:xz") as tar:
            prefix = "usr/include/onnxruntime/"
            for member in tar.getmembers():
                name = member.name.removeprefix("./")
                if member.isfile() and name.startswith(prefix) and name.endswith(".h"):
                    dest = staging / name[len(prefix) :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None
                    dest.write_bytes(src.read())
        try:
            staging.rename(root)
        except OSError:  # another process installed them first
            if not (root / "onnxruntime_cxx_api.h").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _ar_member(data: bytes, wanted: str) -> bytes:
    """One member of a Unix ``ar`` archive (the container format of a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise OrtOpsUnavailable("ONNX Runtime headers package is not an ar archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name == wanted:
            return data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    raise OrtOpsUnavailable(f"ONNX Runtime headers package has no {wanted}")


def available() -> bool:
    """Whether the library is already built (never builds)."""
    try:
        library_path(build=False)
    except OrtOpsUnavailable:
        return False
    return True


def register(options: ort.SessionOptions, build: bool = False) -> bool:
    """Register the library into ``options`` if it is built (or can be, with ``build``)."""
    try:
        path = library_path(build=build)
    except OrtOpsUnavailable:
        return False
    options.register_custom_ops_library(str(path))
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m smoothrot.ortops.library [--print-path]``: build (or find) the library."""
    parser = argparse.ArgumentParser(
        prog="python -m smoothrot.ortops.library", description=main.__doc__
    )
    parser.add_argument("--print-path", action="store_true", help="print only the library path")
    args = parser.parse_args(argv)
    try:
        path = library_path(build=True)
    except OrtOpsUnavailable as exc:
        parser.exit(2, f"smoothrot: error: {exc}\n")
    ops = ", ".join((OP_TYPE_PER_IC, OP_TYPE_PER_OC, OP_TYPE_ROTATION, OP_TYPE_ATTENTION))
    print(path if args.print_path else f"{DOMAIN}::{{{ops}}} library: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
