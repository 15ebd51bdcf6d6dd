"""The configs of the deployment targets: ``lower`` (ONNX Runtime) and ``build`` (TensorRT)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from smoothrot.compiler.config.common import DEFAULT_ACCURACY_LEVEL, _check_level, cli
from smoothrot.core.tensorrt import TrtBackend
from smoothrot.passes.lower_attention import AttentionKernel
from smoothrot.passes.lower_ort import PerIcKernel, PerOcKernel
from smoothrot.passes.lower_rotation import RotationKernel

__all__ = [
    "RTX_COMPUTE_CAPABILITIES",
    "BuildConfig",
    "EngineConfig",
    "LowerConfig",
    "check_plugin_backend",
]


@dataclass(frozen=True)
class LowerConfig:
    VERSION: ClassVar[int] = 1
    accuracy_level: int = field(
        default=DEFAULT_ACCURACY_LEVEL,
        metadata=cli(
            "accuracy level shipped: 0 = fp32 compute (exact), 4 = int8 activations "
            "per block (fast on CPUs)"
        ),  # fmt: skip
    )
    evaluate: bool = field(
        default=True,
        metadata=cli("perplexity of the QDQ and the lowered model in the report", flag="--eval"),
    )
    per_ic: PerIcKernel = field(
        default=PerIcKernel.ORTOPS,
        metadata=cli("per-IC layers: ortops = smoothrot's ONNX Runtime op (built on first use); "
                     "split = standard ORT ops only (Mul + MatMulNBits per column group, slower)"),
    )  # fmt: skip
    per_oc: PerOcKernel = field(
        default=PerOcKernel.ORTOPS,
        metadata=cli("per-OC layers: ortops = smoothrot's MatMulInt4PerOC (groups that are "
                     "multiples of 64); matmulnbits = ONNX Runtime's MatMulNBits"),
    )  # fmt: skip
    rotation: RotationKernel = field(
        default=RotationKernel.ORTOPS,
        metadata=cli("online Hadamard rotations: ortops = one KroneckerRotation node each; "
                     "matmul = the QDQ graph's Reshape/MatMul/MatMul/Reshape"),
    )  # fmt: skip
    attention: AttentionKernel = field(
        default=AttentionKernel.ORTOPS,
        metadata=cli("attention: ortops = one GroupedAttention node per layer, reading the KV "
                     "cache in place; standard = the exporter's nodes"),
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_level(self.accuracy_level)
        PerIcKernel(self.per_ic)
        PerOcKernel(self.per_oc)
        RotationKernel(self.rotation)
        AttentionKernel(self.attention)


# TensorRT-RTX ahead-of-time targets (its ComputeCapability enum); TensorRT has no such choice.
RTX_COMPUTE_CAPABILITIES = (75, 80, 86, 89, 120, 121)


def _compute_capabilities(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part.strip().removeprefix("sm_")) for part in text.split(",") if part)
    except ValueError:
        raise ValueError(f"expected e.g. 80,86,89 (got {text!r})") from None


@dataclass(frozen=True)
class EngineConfig:
    VERSION: ClassVar[int] = 1
    max_prompt: int = field(default=512, metadata=cli("longest prefill (profile 0)"))
    max_context: int = field(default=2048, metadata=cli("longest cache + 1 (profile 1)"))
    opt_prompt: int | None = field(
        default=None, metadata=cli("prefill length TensorRT tunes for (none: min(128, max))")
    )
    opt_context: int | None = field(
        default=None, metadata=cli("context TensorRT tunes decode for (none: min(512, max))")
    )
    compute_capabilities: tuple[int, ...] = field(
        default=(),
        metadata=cli("TensorRT-RTX targets, e.g. 80,86,89 (default: TensorRT-RTX's own)",
                     flag="--compute-capability", parse=_compute_capabilities),
    )  # fmt: skip

    def __post_init__(self) -> None:
        # Profile 0 prefills 1..max_prompt tokens into an empty cache; profile 1 decodes one token
        # on 1..max_context-1 cached positions, so the cache a longest prefill leaves must fit.
        if self.max_prompt < 1:
            raise ValueError(f"--max-prompt must be >= 1, got {self.max_prompt}")
        if self.max_context <= self.max_prompt:
            raise ValueError(
                f"--max-context ({self.max_context}) must exceed --max-prompt "
                f"({self.max_prompt}): decoding continues after a prefill of up to max-prompt "
                "tokens, on at most max-context - 1 cached positions"
            )
        if self.opt_prompt is None:
            object.__setattr__(self, "opt_prompt", min(128, self.max_prompt))
        if self.opt_context is None:
            object.__setattr__(self, "opt_context", min(512, self.max_context))
        if not 1 <= self.opt_prompt <= self.max_prompt:
            raise ValueError(
                f"--opt-prompt must be in 1..{self.max_prompt} (--max-prompt), "
                f"got {self.opt_prompt}"
            )
        if not 2 <= self.opt_context <= self.max_context:
            raise ValueError(
                f"--opt-context must be in 2..{self.max_context} (--max-context), "
                f"got {self.opt_context}"
            )
        bad = [cc for cc in self.compute_capabilities if cc not in RTX_COMPUTE_CAPABILITIES]
        if bad:
            raise ValueError(
                f"compute capability {bad[0]} is not a TensorRT-RTX target "
                f"{list(RTX_COMPUTE_CAPABILITIES)}"
            )


@dataclass(frozen=True)
class BuildConfig:
    VERSION: ClassVar[int] = 1
    backend: TrtBackend | None = field(
        default=None,
        metadata=cli("default: TensorRT if importable, else TensorRT-RTX", flag="--trt-backend"),
    )
    engine: EngineConfig = field(default=EngineConfig(), metadata=cli(flatten=True))
    evaluate: bool = field(
        default=True,
        metadata=cli("perplexity of the shipped graph vs the QDQ graph (ONNX Runtime)",
                     flag="--eval"),
    )  # fmt: skip
    plugins: bool = field(
        default=False,
        metadata=cli("INT4 GEMMs and online Hadamards as our Triton-kernel plugins (TensorRT "
                     ">= 10.9 and a GPU; not TensorRT-RTX)"),
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_plugin_backend(self.backend, self.plugins)


def check_plugin_backend(backend: TrtBackend | None, plugins: bool) -> None:
    if plugins and backend is TrtBackend.TENSORRT_RTX:
        raise ValueError("TensorRT-RTX has no plugin API; --plugins needs TensorRT >= 10.9")
