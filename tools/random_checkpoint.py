"""Random Llama checkpoints at real model shapes, for scale benchmarks (``bench_scale``).

:func:`write_random_checkpoint` writes a Hugging Face Llama model directory: ``config.json``,
random **bf16** weights as sharded safetensors (``model-0000K-of-0000N.safetensors`` plus
``model.safetensors.index.json``), and SmolLM2's tokenizer (49152 ids, all valid for any vocab
of at least 49152, which is why the shapes keep their real vocabularies). The weights are
generated tensor by tensor and written a shard at a time, so the whole model is never in memory.
Weights are N(0, 0.02), norm weights uniform(0.5, 1.5); a few seeded "outlier" hidden channels
are scaled ×20 in the embedding and every layer norm, so calibration sees activation outliers.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "OUTLIER_CHANNELS",
    "OUTLIER_SCALE",
    "SHAPES",
    "SHARD_BYTES",
    "ScaleShape",
    "tensor_shapes",
    "write_random_checkpoint",
]

SHARD_BYTES = 2 * 10**9  # tensor bytes per shard at most (a larger tensor gets a shard alone)
OUTLIER_CHANNELS = 4
OUTLIER_SCALE = 20.0
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
_CHUNK = 1 << 24  # elements generated at once (64 MB of fp32)


@dataclass(frozen=True)
class ScaleShape:
    """The dimensions of a Llama model (head_dim = hidden / heads)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params(self) -> int:
        """Total parameters, counting lm_head only when it is not tied to the embedding."""
        return sum(_numel(dims) for _, dims in tensor_shapes(self))

    @property
    def bf16_bytes(self) -> int:
        return 2 * self.params


SHAPES: dict[str, ScaleShape] = {
    s.name: s
    for s in (
        ScaleShape("tiny", 256, 4, 4, 2, 512, 49152, tied=False),  # tests
        ScaleShape("1b", 2048, 16, 32, 8, 8192, 128256, tied=True),  # Llama-3.2-1B
        ScaleShape("3b", 3072, 28, 24, 8, 8192, 128256, tied=True),  # Llama-3.2-3B
        ScaleShape("8b", 4096, 32, 32, 8, 14336, 128256, tied=False),  # Llama-3-8B
    )
}


def tensor_shapes(shape: ScaleShape) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of transformers' LlamaForCausalLM, in its [out, in] layout, in file order."""
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    names: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (shape.vocab, h))]
    for i in range(shape.layers):
        p = f"model.layers.{i}"
        names += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (shape.heads * shape.head_dim, h)),
            (f"{p}.self_attn.k_proj.weight", (kv, h)),
            (f"{p}.self_attn.v_proj.weight", (kv, h)),
            (f"{p}.self_attn.o_proj.weight", (h, shape.heads * shape.head_dim)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (shape.intermediate, h)),
            (f"{p}.mlp.up_proj.weight", (shape.intermediate, h)),
            (f"{p}.mlp.down_proj.weight", (h, shape.intermediate)),
        ]
    names.append(("model.norm.weight", (h,)))
    if not shape.tied:
        names.append(("lm_head.weight", (shape.vocab, h)))
    return names


def _numel(dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _plan_shards(
    tensors: list[tuple[str, tuple[int, ...]]], shard_bytes: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive tensors grouped into shards of at most ``shard_bytes`` of bf16 data."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in tensors:
        nbytes = 2 * _numel(dims)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, dims))
        size += nbytes
    return shards


def _random(name: str, dims: tuple[int, ...], outliers: torch.Tensor, g: torch.Generator):
    """One bf16 tensor, generated in chunks of rows (no full-size fp32 copy)."""
    out = torch.empty(dims, dtype=torch.bfloat16)
    if len(dims) == 1:  # a norm weight
        out.copy_(torch.rand(dims, generator=g).add_(0.5))
        if "layernorm" in name:
            out[outliers] *= OUTLIER_SCALE
        return out
    rows = max(1, _CHUNK // dims[1])
    for start in range(0, dims[0], rows):
        block = out[start : start + rows]
        block.copy_(torch.randn(block.shape, generator=g).mul_(0.02))
    if name == "model.embed_tokens.weight":
        out[:, outliers] *= OUTLIER_SCALE
    return out


def _write_tokenizer(out: Path, tokenizer_dir: Path | None) -> None:
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, out / name)
        return
    from transformers import AutoTokenizer

    from smoothrot.compiler.modeldir.sources import default_model_path

    path = default_model_path()
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(out)


def _write_config(out: Path, shape: ScaleShape) -> None:
    from transformers import AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    LlamaConfig(
        architectures=["LlamaForCausalLM"],
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate,
        vocab_size=shape.vocab,
        tie_word_embeddings=shape.tied,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        dtype="bfloat16",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ).to_json_file(str(out / "config.json"))


def write_random_checkpoint(
    out: Path,
    shape: ScaleShape,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> int:
    """Write a random bf16 Llama checkpoint of ``shape`` into ``out``; return the bytes written
    (every file of ``out``). Shards hold at most ``shard_bytes`` of tensor data each.

    The tokenizer files come from ``tokenizer_dir`` (``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json``, ``chat_template.jinja``, where present), else from the packaged
    SmolLM2 GGUF."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(out, tokenizer_dir)
    _write_config(out, shape)
    g = torch.Generator().manual_seed(seed)
    outliers = torch.randperm(shape.hidden, generator=g)[:OUTLIER_CHANNELS]
    shards = _plan_shards(tensor_shapes(shape), shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    for k, plan in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: _random(name, dims, outliers, g) for name, dims in plan}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        del tensors
        weight_map.update((name, file) for name, _ in plan)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file())
