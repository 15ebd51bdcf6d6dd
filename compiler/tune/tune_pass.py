"""BiSup tuning as a pipeline step: the quantized graph tuned block by block against the float
graph saved before the lossy passes, on calibration text (``compiler/tune/bisup.py``)."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from smoothrot.compiler.calibrate.statistics import token_sequences
from smoothrot.compiler.config import CalibrationConfig, TuneConfig
from smoothrot.compiler.modeldir.model_graph import load_graph
from smoothrot.compiler.tune.bisup import tune_blocks
from smoothrot.core.manifest import load_manifest
from smoothrot.core.pass_infra import PassReport

__all__ = ["TunePass"]


class TunePass(ir.passes.InPlacePass):
    """``details["tuning"]``: the :class:`~smoothrot.compiler.tune.bisup.TuneResult`."""

    name = "tune"

    def __init__(self, float_dir: Path, config: TuneConfig) -> None:
        super().__init__()
        self.float_dir, self.config = Path(float_dir), config

    def call(self, model: ir.Model) -> PassReport:
        manifest = load_manifest(self.float_dir)
        fp = load_graph(self.float_dir, manifest)
        c = self.config
        cal = CalibrationConfig(tokens=c.sequences * c.seq, seq=c.seq, hessian=False)
        seqs, _, _ = token_sequences(self.float_dir, cal, None)
        result = tune_blocks(model, fp, manifest, seqs, c)
        return PassReport(model, any(b.kept for b in result.blocks), {"tuning": result})
