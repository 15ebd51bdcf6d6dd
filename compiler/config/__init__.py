"""Every command's configuration, in one package: frozen, validated, versioned dataclasses (one
per command or step), the enums they take and the defaults the command line shows.

The command line is generated from these classes (``smoothrot.tools.cli_config``): one flag per
field, named after the field (kebab-case) unless its metadata names the flag, its help text and
default taken from here. ``core/config_io.py`` saves and reads them as JSON (``--save-config`` /
``--config``); each class's ``VERSION`` changes when a field changes meaning.
"""

from smoothrot.compiler.config.common import (
    ACCURACY_LEVELS,
    DEFAULT_ACCURACY_LEVEL,
    EXACT_ACCURACY_LEVEL,
    MAX_OPSET,
    MIN_OPSET,
    AnalyzeConfig,
    Backend,
    BenchConfig,
    CalibrationConfig,
    DoctorConfig,
    DType,
    EvalConfig,
    ExportConfig,
    GenerateConfig,
    cli,
)
from smoothrot.compiler.config.compile import (
    Calibration,
    CompileConfig,
    StreamMode,
    Target,
    TuneConfig,
)
from smoothrot.compiler.config.targets import (
    RTX_COMPUTE_CAPABILITIES,
    BuildConfig,
    EngineConfig,
    LowerConfig,
    check_plugin_backend,
)
from smoothrot.compiler.recipes import Recipe, Transform
from smoothrot.core.tensorrt import TrtBackend
from smoothrot.passes.lower_attention import AttentionKernel
from smoothrot.passes.lower_ort import PerIcKernel, PerOcKernel
from smoothrot.passes.lower_rotation import RotationKernel

__all__ = [
    "ACCURACY_LEVELS",
    "AnalyzeConfig",
    "AttentionKernel",
    "Backend",
    "BenchConfig",
    "BuildConfig",
    "Calibration",
    "CalibrationConfig",
    "CompileConfig",
    "DEFAULT_ACCURACY_LEVEL",
    "DType",
    "DoctorConfig",
    "EXACT_ACCURACY_LEVEL",
    "EngineConfig",
    "EvalConfig",
    "ExportConfig",
    "GenerateConfig",
    "LowerConfig",
    "MAX_OPSET",
    "MIN_OPSET",
    "PerIcKernel",
    "PerOcKernel",
    "RTX_COMPUTE_CAPABILITIES",
    "Recipe",
    "RotationKernel",
    "StreamMode",
    "Target",
    "Transform",
    "TrtBackend",
    "TuneConfig",
    "check_plugin_backend",
    "cli",
]
