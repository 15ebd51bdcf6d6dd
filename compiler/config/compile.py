"""The config of ``compile``: the recipe, its overrides, BiSup tuning and the target."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from smoothrot.compiler.config.common import cli
from smoothrot.compiler.config.targets import LowerConfig
from smoothrot.compiler.recipes import Recipe, Transform
from smoothrot.passes.quantize_kv import KVQuantConfig
from smoothrot.passes.quantize_weights import WeightQuantConfig
from smoothrot.passes.smooth import SmoothConfig

__all__ = [
    "CompileConfig",
    "StreamMode",
    "Target",
    "TuneConfig",
]


@dataclass(frozen=True)
class TuneConfig:
    VERSION: ClassVar[int] = 1
    # calibration sequences (from the calibration text, never the evaluation text)
    sequences: int = field(default=32, metadata=cli("tuning sequences"))
    seq: int = field(default=128, metadata=cli("tokens per tuning sequence"))
    batch: int = field(default=8, metadata=cli("sequences per optimizer step"))
    epochs: int = field(
        default=15,
        metadata=cli(
            "passes over the tuning sequences per block (Adam steps = epochs · sequences / batch)"
        ),  # fmt: skip
    )
    lr: float = field(default=5e-3, metadata=cli("Adam learning rate (log-scale parameters)"))
    gamma: bool = field(default=True, metadata=cli("tune the RMSNorm γ too"))
    act_clip: bool = field(
        default=True, metadata=cli("tune the INT4 activation quantizers' clipping ratios")
    )
    seed: int = field(default=0, metadata=cli("seed of the tuning order"))

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


class StreamMode(enum.Enum):
    """How ``compile --model`` reads the model: layer by layer from the checkpoint (memory of one
    layer), or exported whole first (the fp32 export in the work directory)."""

    AUTO = "auto"  # stream, unless --tune or --dump-after need the whole float graph
    ON = "on"
    OFF = "off"


class Calibration(enum.Enum):
    """What the Hessians XᵀX that GPTQ and AdaDim read are collected on. Sequential (GPTQ's
    sequential mode: layer i sees the output of the quantized layers < i) gave SmolLM2-135M
    ``w4a16`` perplexity 16.003 against 16.028 on the float model's activations, but it runs
    every layer a second time on the calibration tokens, which a Llama-3-8B-shaped compile
    cannot afford within its time target (docs/streaming.md): it is opt-in."""

    FLOAT = "float"  # the float model's activations (the whole-graph compile's only choice)
    SEQUENTIAL = "sequential"  # the already quantized layers' output (streamed compiles only)


class Target(enum.Enum):
    """What ``compile`` writes: the portable QDQ graph, or it lowered for ONNX Runtime."""

    QDQ = "qdq"
    ORT = "ort"


_WEIGHTS_HELP = {
    "grouping": "INT4 weight groups: along K per output channel, along N per input channel, or "
    "chosen per layer by calibration output error (AdaDim)",
    "group_size": "INT4 group size (0 = per channel); halved where it does not divide a dimension",
    "algorithm": "weight rounding: round to nearest or GPTQ",
    "lm_head": "quantize lm_head to INT4 too (it stays fp otherwise)",
    "clip_grid": "clipping ratios searched per group scale, e.g. 1.0,0.95,0.9",
    "damp": "GPTQ damping, a fraction of the Hessian's mean diagonal",
}


@dataclass(frozen=True)
class CompileConfig:
    VERSION: ClassVar[int] = 2
    recipe: Recipe = field(
        metadata=cli("fp-* apply only exact transforms (perplexity must not change); "
                     "w4a16/w4a8/w4a4/w4a4kv4 quantize weights to INT4 (and activations, KV)")
    )  # fmt: skip
    transform: Transform | None = field(
        default=None, metadata=cli("override the recipe's exact transform")
    )
    alpha: float = field(default=0.5, metadata=cli("SmoothQuant migration strength"))
    weights: WeightQuantConfig = field(
        default_factory=WeightQuantConfig,
        metadata=cli(flatten=True, helps=_WEIGHTS_HELP, flags={"lm_head": "--quantize-lm-head"}),
    )
    kv_prefix: int = field(
        default=0,
        metadata=cli("KV entries at positions < P (the system prompt) stay unquantized (BiSup); "
                     "also a runtime input `kv_fp_prefix`", metavar="P"),
    )  # fmt: skip
    calibration_tokens: int = field(default=4096, metadata=cli("calibration tokens (>= 512)"))
    allow_pickle: bool = field(
        default=False,
        metadata=cli("with --model: load pytorch_model*.bin pickles (weights_only) when there are "
                     "no safetensors"),
    )  # fmt: skip
    seed: int = field(default=0, metadata=cli("seed of any random rotation factor"))
    dump_after: tuple[str, ...] = field(
        default=(),
        metadata=cli("also write the graph after this pass to DIR/dumps/PASS/ (repeatable)",
                     metavar="PASS"),
    )  # fmt: skip
    evaluate: bool = field(
        default=True, metadata=cli("perplexity before/after in the report", flag="--eval")
    )
    tune: TuneConfig | None = field(
        default=None,
        metadata=cli("BiSup: tune INT4 group scales, norm γ and INT4 activation clipping block "
                     "by block against the float model, folded into the graph; writes tune.md",
                     enable="--tune"),
    )  # fmt: skip
    target: Target = field(
        default=Target.QDQ,
        metadata=cli("qdq: the portable INT4 QDQ graph; ort: also lowered to ONNX Runtime's fast "
                     "CPU form (as `smoothrot lower`; INT4 recipes only)"),
    )  # fmt: skip
    stream: StreamMode = field(
        default=StreamMode.AUTO,
        metadata=cli("with --model: compile layer by layer from the checkpoint, never holding "
                     "the whole model (auto: unless --tune or --dump-after need the whole graph; "
                     "off: export it whole first)"),
    )  # fmt: skip
    calibration: Calibration = field(
        default=Calibration.FLOAT,
        metadata=cli("what GPTQ's Hessians are collected on: float = the float model's "
                     "activations; sequential (streamed only) = the output of the already "
                     "quantized layers (better, one more run of each layer)"),
    )  # fmt: skip
    # With Target.ORT: how the QDQ result is lowered (its ``evaluate`` follows the compile's).
    lowering: LowerConfig = field(
        default_factory=LowerConfig, metadata=cli(flatten=True, exclude=("evaluate",))
    )

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            raise ValueError(f"recipe must be a Recipe, got {self.recipe!r}")
        if self.transform is not None and not isinstance(self.transform, Transform):
            raise ValueError(f"transform must be a Transform, got {self.transform!r}")
        SmoothConfig(alpha=self.alpha)  # validates alpha
        if not 0 <= self.kv_prefix < 2**63:  # a runtime int64 input of the compiled graph
            raise ValueError(f"--kv-prefix must be in [0, 2^63), got {self.kv_prefix}")
        KVQuantConfig(keep_prefix=self.kv_prefix)  # validates P
        if self.kv_prefix and self.recipe.spec.kv_bits is None:
            kv = ", ".join(r.value for r in Recipe if r.spec.kv_bits is not None)
            raise ValueError(
                f"--kv-prefix needs a recipe that quantizes the KV cache ({kv}); "
                f"{self.recipe.value} keeps it in full precision"
            )
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
        if not isinstance(self.stream, StreamMode):
            raise ValueError(f"stream must be a StreamMode, got {self.stream!r}")
        if self.stream is StreamMode.ON and (self.tune is not None or self.dump_after):
            what = "--tune" if self.tune is not None else "--dump-after"
            raise ValueError(f"{what} needs the whole float graph: use --stream off (or auto)")
        if not isinstance(self.calibration, Calibration):
            raise ValueError(f"calibration must be a Calibration, got {self.calibration!r}")
        if self.calibration is Calibration.SEQUENTIAL and not self.streams(from_model=True):
            raise ValueError(
                "--calibration sequential calibrates layer by layer: it needs a streamed compile "
                "(--model, --stream on/auto, no --tune or --dump-after)"
            )
        if self.dump_after:
            self._check_dump_after()

    def _check_dump_after(self) -> None:
        """Every ``--dump-after`` name is a step this compile can run (compiler/pipelines.py)."""
        from smoothrot.compiler.pipelines import compile_step_names  # it imports this module

        steps = compile_step_names(self)
        unknown = [name for name in self.dump_after if name not in steps]
        if unknown:
            raise ValueError(
                f"--dump-after {unknown[0]}: a compile of {self.recipe.value} (transform "
                f"{self.transform_used.value}) has no such step; its steps: {', '.join(steps)}"
            )

    def streams(self, from_model: bool) -> bool:
        """Whether a compile of this config streams (``from_model``: it starts from --model)."""
        if not from_model or self.stream is StreamMode.OFF:
            return False
        return self.stream is StreamMode.ON or (self.tune is None and not self.dump_after)

    @property
    def sequential(self) -> bool:
        return self.calibration is Calibration.SEQUENTIAL

    @property
    def transform_used(self) -> Transform:
        return self.transform or self.recipe.spec.transform
