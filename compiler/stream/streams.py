"""The residual streams between layers of a streamed compile, and their tokens.

Each stream is ``[sequences, seq, hidden]`` fp32: the residual entering the next layer.

- ``cal``: the transformed float model on the calibration tokens (its Hessians: GPTQ's input);
- ``cal_q``: the already quantized layers on the same tokens (sequential calibration only);
- ``cal_u``: the untransformed model on them (the abs-max that smoothing reads);
- ``eval_u`` / ``eval_q``: the fp reference and the result on the evaluation windows;
- ``probe_f``: the transformed float model on the 128 probe tokens (the exact stage's proof).

Saved after every layer (``save``/``load``, one ``.npz`` replaced atomically) so that a killed
compile resumes from the last finished layer with the streams that layer produced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

__all__ = ["Streams"]


@dataclass
class Streams:
    cal_ids: np.ndarray
    cal: np.ndarray
    cal_q: np.ndarray | None = None
    cal_u: np.ndarray | None = None
    eval_ids: np.ndarray | None = None
    eval_u: np.ndarray | None = None
    eval_q: np.ndarray | None = None
    probe_ids: np.ndarray | None = None
    probe_f: np.ndarray | None = None

    @property
    def needs_untransformed(self) -> bool:
        return self.cal_u is not None

    def save(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **{k: v for k, v in arrays.items() if v is not None})
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Streams:
        with np.load(path) as data:
            return cls(**{k: np.array(data[k]) for k in data.files})
