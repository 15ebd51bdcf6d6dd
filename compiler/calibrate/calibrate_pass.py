"""The calibration step of a pipeline: statistics of a model directory, written to a folder.

It reads the model as saved in ``model_dir`` (the input export, or the transformed graph a
:class:`~smoothrot.compiler.modeldir.model_dir.SaveModelDirPass` wrote just before) and leaves the
graph it is given unchanged; later passes read the folder through a
:class:`~smoothrot.compiler.calibrate.store.StatisticsLookup`.
"""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from smoothrot.compiler.calibrate.statistics import calibrate_dir
from smoothrot.compiler.config import CalibrationConfig
from smoothrot.core.pass_infra import PassReport

__all__ = ["CalibratePass"]


class CalibratePass(ir.passes.InPlacePass):
    def __init__(
        self, model_dir: Path, output: Path, config: CalibrationConfig, name: str = "calibrate"
    ) -> None:
        super().__init__()
        self.model_dir, self.output, self.config, self.name = Path(model_dir), output, config, name

    def call(self, model: ir.Model) -> PassReport:
        calibrate_dir(self.model_dir, self.config, self.output)
        details = {"statistics": str(self.output), "hessian": self.config.hessian}
        return PassReport(model, False, details)
