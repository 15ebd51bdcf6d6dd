"""The configs of the measuring and utility commands (export, eval, generate, calibrate, bench,
analyze, doctor), the enums they share, and ``cli``: the metadata the command line reads."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

from smoothrot.core.manifest import DType

__all__ = [
    "ACCURACY_LEVELS",
    "DEFAULT_ACCURACY_LEVEL",
    "EXACT_ACCURACY_LEVEL",
    "MAX_OPSET",
    "MIN_OPSET",
    "AnalyzeConfig",
    "Backend",
    "BenchConfig",
    "CalibrationConfig",
    "DType",
    "DoctorConfig",
    "EvalConfig",
    "ExportConfig",
    "GenerateConfig",
    "cli",
]


def cli(help: str = "", **options: Any) -> dict[str, Any]:
    """A field's command-line metadata: its ``help``, and optionally ``flag`` (the option's
    name), ``flatten`` (a nested config's flags without the field's prefix), ``enable`` (an
    optional nested config's switch), ``exclude`` / ``flags`` / ``helps`` (for a nested config's
    own fields), ``parse`` (a function from the flag's text) or ``hidden``."""
    return {"help": help, **options}


MIN_OPSET = 21  # INT4 and blocked DequantizeLinear need opset 21
# The newest opset torch 2.13's dynamo exporter writes as asked (its onnxscript version converter
# stops at 25; above that it silently keeps opset 18). ``export_model`` checks the traced graph's
# opset, so a newer exporter that writes another one is refused, not mislabelled.
MAX_OPSET = 25


# ONNX Runtime's accuracy level for fused DQ+MatMul / MatMulNBits: 0 computes in fp32 (the QDQ
# graph's meaning: what eval measures unless told otherwise); 4 quantizes the activations to int8
# per block inside the kernel, the fast CPU path that lower ships and bench times (its quality is
# measured in every lowering report).
EXACT_ACCURACY_LEVEL = 0


DEFAULT_ACCURACY_LEVEL = 4


ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def _check_level(level: int) -> None:
    if level not in ACCURACY_LEVELS:
        raise ValueError(f"accuracy level must be 0..4, got {level}")


@dataclass(frozen=True)
class ExportConfig:
    VERSION: ClassVar[int] = 1
    dtype: DType = field(default=DType.FP32, metadata=cli("compute dtype of the export"))
    opset: int = field(default=MIN_OPSET, metadata=cli(f"ONNX opset ({MIN_OPSET}..{MAX_OPSET})"))
    allow_pickle: bool = field(
        default=False,
        metadata=cli(
            "load pytorch_model*.bin pickles (weights_only) when there are no safetensors"
        ),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, DType):
            raise ValueError(f"dtype must be a DType, got {self.dtype!r}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ValueError(
                f"--opset must be in {MIN_OPSET}..{MAX_OPSET} (INT4 needs >= {MIN_OPSET}; the "
                f"torch exporter writes at most {MAX_OPSET}), got {self.opset}"
            )


class Backend(enum.Enum):
    ORT = "ort"  # ONNX Runtime on the CPU: the directory's model.onnx
    TRT = "trt"  # TensorRT on an NVIDIA GPU: the engine.trt that `smoothrot build` wrote


_BACKEND_HELP = (
    "ort: ONNX Runtime on the CPU; trt: the engine.trt of a `smoothrot build` directory on an "
    "NVIDIA GPU"
)


@dataclass(frozen=True)
class EvalConfig:
    """Perplexity protocol: non-overlapping windows of ``seq`` tokens from the start of the text."""

    VERSION: ClassVar[int] = 1
    seq: int = field(default=512, metadata=cli("window length in tokens"))
    windows: int = field(default=8, metadata=cli("number of non-overlapping windows"))
    system_prompt: bool = field(
        default=False, metadata=cli("put the chat system turn before every window")
    )
    kv_prefix: int | None = field(
        default=None, metadata=cli("override a quantized KV cache's kept prefix P", metavar="P")
    )
    accuracy_level: int = field(
        default=EXACT_ACCURACY_LEVEL,
        metadata=cli(
            "ONNX Runtime accuracy level for fused DQ+MatMul (0: the QDQ graph as written)"
        ),
    )
    backend: Backend = field(default=Backend.ORT, metadata=cli(_BACKEND_HELP))

    def __post_init__(self) -> None:
        if self.seq < 2:
            raise ValueError(f"seq must be >= 2, got {self.seq}")
        if self.windows < 1:
            raise ValueError(f"windows must be >= 1, got {self.windows}")
        _check_level(self.accuracy_level)
        if self.kv_prefix is not None and not 0 <= self.kv_prefix < 2**63:
            raise ValueError(f"--kv-prefix must be in [0, 2^63), got {self.kv_prefix}")


@dataclass(frozen=True)
class GenerateConfig:
    VERSION: ClassVar[int] = 1
    max_new_tokens: int = field(default=64, metadata=cli("tokens to generate"))
    backend: Backend = field(default=Backend.ORT, metadata=cli(_BACKEND_HELP))

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class CalibrationConfig:
    VERSION: ClassVar[int] = 1
    tokens: int = field(default=8192, metadata=cli("calibration tokens"))
    seq: int = field(default=512, metadata=cli("tokens per calibration sequence"))
    hessian: bool = field(default=True, metadata=cli("also collect the Hessians XᵀX"))

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise ValueError(f"seq must be >= 1, got {self.seq}")
        if self.tokens < self.seq:
            raise ValueError(f"tokens ({self.tokens}) must be >= seq ({self.seq})")


@dataclass(frozen=True)
class BenchConfig:
    VERSION: ClassVar[int] = 1
    prompt_tokens: int = field(default=128, metadata=cli("prompt length of the prefill"))
    new_tokens: int = field(default=128, metadata=cli("decoded tokens per timed run"))
    runs: int = field(default=5, metadata=cli("timed runs (medians reported)"))
    threads: int = field(default=0, metadata=cli("0 = ONNX Runtime's default"))
    accuracy_level: int = field(
        default=DEFAULT_ACCURACY_LEVEL,
        metadata=cli("for QDQ (not lowered) models: the level ONNX Runtime fuses DQ+MatMul at"),
    )
    seed: int = field(default=0, metadata=cli("seed of the random prompt"))
    backend: Backend = field(default=Backend.ORT, metadata=cli(_BACKEND_HELP))
    profile: bool = field(
        default=False,
        metadata=cli("also profile 32 decode steps with ONNX Runtime's profiler: time per op "
                     "type and the online rotations' share"),
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "new_tokens", "runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        _check_level(self.accuracy_level)
        if self.profile and self.backend is not Backend.ORT:
            raise ValueError("--profile uses ONNX Runtime's profiler: it needs --backend ort")


@dataclass(frozen=True)
class AnalyzeConfig:
    VERSION: ClassVar[int] = 1
    tokens: int = field(default=1024, metadata=cli("calibration-text tokens analysed"))
    seq: int = field(default=512, metadata=cli("tokens per sequence"))
    alpha: float = field(default=0.5, metadata=cli("SmoothQuant migration strength"))
    bits: int = field(default=4, metadata=cli("bits of the simulated weight and activation grid"))
    seed: int = field(default=0, metadata=cli("seed of any random rotation factor"))
    allow_pickle: bool = field(
        default=False,
        metadata=cli("with --model: load pytorch_model*.bin pickles (weights_only) when there are "
                     "no safetensors"),
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise ValueError(f"seq must be >= 1, got {self.seq}")
        if self.tokens < self.seq:
            raise ValueError(f"tokens ({self.tokens}) must be >= seq ({self.seq})")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be in [2, 8], got {self.bits}")


@dataclass(frozen=True)
class DoctorConfig:
    VERSION: ClassVar[int] = 1
    trt: bool = field(
        default=False, metadata=cli("build and run one engine per plugin (TensorRT >= 10.9, GPU)")
    )
