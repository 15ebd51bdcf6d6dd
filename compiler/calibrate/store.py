"""Where calibration statistics live between compiles, and how passes read them.

:func:`statistics_store` keys a cache folder by the export's manifest and smoothrot's own
sources (compiler, passes, core), so statistics left by another version of smoothrot or another
export are never reused. :class:`StatisticsLookup` is the ``fn(Linear) -> array`` the smoothing
and weight-quantization passes take: it opens the statistics only when first asked, so a pipeline
can declare it before the calibration step that writes them has run.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

import smoothrot.compiler
import smoothrot.core
import smoothrot.passes
from smoothrot.compiler.calibrate.statistics import CalibrationStats, load_calibration
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import MANIFEST_NAME, Manifest
from smoothrot.passes.model_map import Linear

__all__ = ["StatisticsLookup", "has_statistics", "statistics_store"]

_INDEX = "index.json"


def statistics_store(cache: Path, onnx_dir: Path) -> Path:
    """The folder under ``cache`` for statistics of this export computed by this code."""
    h = hashlib.sha256((Path(onnx_dir) / MANIFEST_NAME).read_bytes())
    for package in (smoothrot.compiler, smoothrot.passes, smoothrot.core):
        root = Path(package.__file__).parent
        for source in sorted(root.rglob("*.py")):
            h.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    return Path(cache) / h.hexdigest()[:16]


def has_statistics(directory: Path) -> bool:
    return (Path(directory) / _INDEX).is_file()


class StatisticsLookup:
    """``lookup(Linear) -> array``: the ``field`` (``absmax`` or ``hessian``) of a layer's input,
    read from ``directory`` on first use."""

    def __init__(self, directory: Path, manifest: Manifest, field: str) -> None:
        self.directory, self.field = Path(directory), field
        self.module_of = {w: m for m, w in manifest.weights.items()}

    @functools.cached_property
    def stats(self) -> CalibrationStats:
        return load_calibration(self.directory)

    def __call__(self, lin: Linear) -> np.ndarray:
        if lin.name not in self.module_of:
            raise SmoothrotError(f"no calibration statistics for weight {lin.name}")
        value = getattr(self.stats.for_layer(self.module_of[lin.name]), self.field)
        if value is None:
            raise SmoothrotError(f"calibration has no {self.field} for {lin.name}")
        return np.asarray(value)
