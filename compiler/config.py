"""Every command's configuration, in one place: frozen, validated dataclasses (one per step),
the enums they take and the defaults the command line shows."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from smoothrot.compiler.recipes import Recipe, Transform
from smoothrot.core.tensorrt import TrtBackend
from smoothrot.passes.lower_attention import AttentionKernel
from smoothrot.passes.lower_ort import PerIcKernel, PerOcKernel
from smoothrot.passes.lower_rotation import RotationKernel
from smoothrot.passes.quantize_kv import KVQuantConfig
from smoothrot.passes.quantize_weights import WeightQuantConfig
from smoothrot.passes.smooth import SmoothConfig

__all__ = [
    "DEFAULT_ACCURACY_LEVEL",
    "MIN_OPSET",
    "RTX_COMPUTE_CAPABILITIES",
    "AnalyzeConfig",
    "Backend",
    "BenchConfig",
    "BuildConfig",
    "CalibrationConfig",
    "CompileConfig",
    "DType",
    "EngineConfig",
    "EvalConfig",
    "ExportConfig",
    "LowerConfig",
    "Recipe",
    "Target",
    "Transform",
    "TuneConfig",
    "check_plugin_backend",
]

MIN_OPSET = 21  # INT4 and blocked DequantizeLinear need opset 21


class DType(enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def torch(self):  # noqa: ANN201 - torch is imported lazily
        import torch

        return {DType.FP32: torch.float32, DType.FP16: torch.float16}[self]

    @property
    def numpy(self):  # noqa: ANN201
        import numpy as np

        return {DType.FP32: np.float32, DType.FP16: np.float16}[self]


@dataclass(frozen=True)
class ExportConfig:
    dtype: DType = DType.FP32
    opset: int = MIN_OPSET

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, DType):
            raise ValueError(f"dtype must be a DType, got {self.dtype!r}")
        if self.opset < MIN_OPSET:
            raise ValueError(f"opset must be >= {MIN_OPSET}, got {self.opset}")


@dataclass(frozen=True)
class EvalConfig:
    """Perplexity protocol: non-overlapping windows of ``seq`` tokens from the start of the text."""

    seq: int = 512
    windows: int = 8

    def __post_init__(self) -> None:
        if self.seq < 2:
            raise ValueError(f"seq must be >= 2, got {self.seq}")
        if self.windows < 1:
            raise ValueError(f"windows must be >= 1, got {self.windows}")


class Backend(enum.Enum):
    ORT = "ort"  # ONNX Runtime on the CPU: the directory's model.onnx
    TRT = "trt"  # TensorRT on an NVIDIA GPU: the engine.trt that `smoothrot build` wrote


@dataclass(frozen=True)
class CalibrationConfig:
    tokens: int = 8192
    seq: int = 512
    hessian: bool = True

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise ValueError(f"seq must be >= 1, got {self.seq}")
        if self.tokens < self.seq:
            raise ValueError(f"tokens ({self.tokens}) must be >= seq ({self.seq})")


@dataclass(frozen=True)
class TuneConfig:
    sequences: int = 32  # calibration sequences (from the calibration text, never the eval text)
    seq: int = 128  # tokens per sequence
    batch: int = 8  # sequences per optimizer step
    epochs: int = 15  # passes over the sequences per block (60 Adam steps at the defaults)
    lr: float = 5e-3  # Adam, on the log-scale parameters θ and φ
    gamma: bool = True  # tune the RMSNorm γ as well as the weight scales
    act_clip: bool = True  # tune the INT4 activation quantizers' clipping ratios
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sequences", "seq", "batch", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"tune {name} must be >= 1, got {getattr(self, name)}")
        if self.sequences % self.batch:
            raise ValueError(
                f"tune sequences ({self.sequences}) must be a multiple of the batch ({self.batch})"
            )
        if not 0 < self.lr < 1:
            raise ValueError(f"tune lr must be in (0, 1), got {self.lr}")

    @property
    def steps(self) -> int:
        return self.epochs * self.sequences // self.batch


# Level 4 (int8 activations per block inside MatMulNBits) is the fast CPU path: on this
# project's 2-core AVX2 machine level 0 is slower than fp32 for the default model's layer shapes
# (tools/bench_layer.py). Its quality is measured in every lowering report.
DEFAULT_ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class LowerConfig:
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL
    evaluate: bool = True  # perplexity of the QDQ and the lowered model in the report
    per_ic: PerIcKernel = PerIcKernel.ORTOPS
    per_oc: PerOcKernel = PerOcKernel.ORTOPS
    rotation: RotationKernel = RotationKernel.ORTOPS
    attention: AttentionKernel = AttentionKernel.ORTOPS

    def __post_init__(self) -> None:
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy level must be 0..4, got {self.accuracy_level}")
        PerIcKernel(self.per_ic)
        PerOcKernel(self.per_oc)
        RotationKernel(self.rotation)
        AttentionKernel(self.attention)


# TensorRT-RTX ahead-of-time targets (its ComputeCapability enum); TensorRT has no such choice.
RTX_COMPUTE_CAPABILITIES = (75, 80, 86, 89, 120, 121)


@dataclass(frozen=True)
class EngineConfig:
    max_prompt: int = 512  # longest prefill (profile 0)
    max_context: int = 2048  # longest cache + 1 (profile 1)
    opt_prompt: int = 128
    opt_context: int = 512
    compute_capabilities: tuple[int, ...] = ()  # TensorRT-RTX targets; () = its default

    def __post_init__(self) -> None:
        if not 1 <= self.opt_prompt <= self.max_prompt:
            raise ValueError(f"need 1 <= opt prompt <= max prompt, got {self}")
        if not 2 <= self.opt_context <= self.max_context:
            raise ValueError(f"need 2 <= opt context <= max context, got {self}")
        bad = [cc for cc in self.compute_capabilities if cc not in RTX_COMPUTE_CAPABILITIES]
        if bad:
            raise ValueError(
                f"compute capability {bad[0]} is not a TensorRT-RTX target "
                f"{list(RTX_COMPUTE_CAPABILITIES)}"
            )


@dataclass(frozen=True)
class BuildConfig:
    backend: TrtBackend | None = None  # None: TensorRT if importable, else TensorRT-RTX
    engine: EngineConfig = EngineConfig()
    evaluate: bool = True  # perplexity of the shipped graph vs the QDQ graph (ONNX Runtime)
    plugins: bool = False  # INT4 GEMMs / Hadamards as our TensorRT >= 10.9 plugins

    def __post_init__(self) -> None:
        check_plugin_backend(self.backend, self.plugins)


def check_plugin_backend(backend: TrtBackend | None, plugins: bool) -> None:
    if plugins and backend is TrtBackend.TENSORRT_RTX:
        raise ValueError("TensorRT-RTX has no plugin API; --plugins needs TensorRT >= 10.9")


class Target(enum.Enum):
    """What ``compile`` writes: the portable QDQ graph, or it lowered for ONNX Runtime."""

    QDQ = "qdq"
    ORT = "ort"


@dataclass(frozen=True)
class CompileConfig:
    recipe: Recipe
    transform: Transform | None = None  # None: the recipe's own
    alpha: float = 0.5
    weights: WeightQuantConfig = field(default_factory=WeightQuantConfig)
    kv_prefix: int = 0  # BiSup P: KV entries at positions < P stay in the compute dtype
    calibration_tokens: int = 4096
    seed: int = 0
    dump_after: tuple[str, ...] = ()
    evaluate: bool = True  # perplexity before/after in the report (lossy recipes)
    tune: TuneConfig | None = None  # BiSup block-wise tuning after the lossy passes
    target: Target = Target.QDQ
    # With Target.ORT: how the QDQ result is lowered (its ``evaluate`` follows the compile's).
    lowering: LowerConfig = field(default_factory=LowerConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            raise ValueError(f"recipe must be a Recipe, got {self.recipe!r}")
        if self.transform is not None and not isinstance(self.transform, Transform):
            raise ValueError(f"transform must be a Transform, got {self.transform!r}")
        SmoothConfig(alpha=self.alpha)  # validates alpha
        KVQuantConfig(keep_prefix=self.kv_prefix)  # validates P
        if self.calibration_tokens < 512:
            raise ValueError(f"calibration tokens must be >= 512, got {self.calibration_tokens}")
        if self.tune is not None and not self.recipe.spec.weights:
            raise ValueError(f"--tune needs an INT4 recipe; {self.recipe.value} has fp weights")
        if self.tune is not None and self.recipe.spec.kv_bits is not None:
            raise NotImplementedError(
                f"--tune with a quantized KV cache ({self.recipe.value}): the model map does "
                "not yet tell the KV quantizer's MatMuls from the block's Linears"
            )
        if not isinstance(self.target, Target):
            raise ValueError(f"target must be a Target, got {self.target!r}")
        if self.target is Target.ORT and not self.recipe.spec.weights:
            raise ValueError(
                f"--target ort needs an INT4 recipe; {self.recipe.value} has fp weights"
            )

    @property
    def transform_used(self) -> Transform:
        return self.transform or self.recipe.spec.transform


@dataclass(frozen=True)
class BenchConfig:
    prompt_tokens: int = 128
    new_tokens: int = 128
    runs: int = 5
    threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    accuracy_level: int = 4  # only for QDQ graphs: the level ORT fuses DQ+MatMul at
    seed: int = 0
    backend: Backend = Backend.ORT

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "new_tokens", "runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")


@dataclass(frozen=True)
class AnalyzeConfig:
    tokens: int = 1024
    seq: int = 512
    alpha: float = 0.5
    bits: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise ValueError(f"seq must be >= 1, got {self.seq}")
        if self.tokens < self.seq:
            raise ValueError(f"tokens ({self.tokens}) must be >= seq ({self.seq})")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be in [2, 8], got {self.bits}")
