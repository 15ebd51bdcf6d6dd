"""smoothrot.compiler: model sources, export, calibration, evaluation and the pipeline driver."""

__version__ = "0.1.0"
