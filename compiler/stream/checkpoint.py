"""A model's weights read one tensor at a time, never the whole model in fp32.

- A Hugging Face directory with ``*.safetensors`` (one file, or shards named by
  ``model.safetensors.index.json``) is read lazily: each tensor is read from its file when asked
  for and converted (bf16 / fp16 / fp32 → fp32) on its own.
- A GGUF file, or a directory that only has ``pytorch_model*.bin`` (with ``allow_pickle``), is
  loaded by transformers as today (it dequantizes the whole model) and its state dict served
  from memory: those are the small models.

Names are the torch parameter names (``model.layers.3.mlp.down_proj.weight``); a tied
``lm_head.weight`` is served from ``model.embed_tokens.weight``. Before any tensor is read, the
names and shapes are checked against what the config describes (:func:`expected_shapes`), so a
checkpoint that does not match its config is one line, not a wrong model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from smoothrot.compiler.modeldir.sources import ModelSource, SourceKind, load_torch_model
from smoothrot.compiler.modeldir.untrusted import check_weights, read_json
from smoothrot.core.errors import SmoothrotError

__all__ = [
    "Checkpoint",
    "EMBEDDING",
    "LM_HEAD",
    "STREAMED_ARCHITECTURES",
    "expected_shapes",
    "open_checkpoint",
    "why_not_streamed",
]

# The families whose every decoder layer one traced layer stands for, with its parameters traced
# as they are stored (the template finds each by content).
STREAMED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")

EMBEDDING, LM_HEAD, FINAL_NORM = "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"
_INDEX = "model.safetensors.index.json"
_BYTES = {"BF16": 2, "F16": 2, "F32": 4}


def why_not_streamed(architecture: str) -> str | None:
    """Why a model of ``architecture`` cannot be compiled layer by layer (None: it can)."""
    if architecture in STREAMED_ARCHITECTURES:
        return None
    if architecture.startswith("gemma3"):
        return (
            "streaming Gemma 3 is not implemented: its layers alternate sliding-window and global "
            "attention with their own RoPE, so one traced layer cannot stand for all, and its "
            "norms are traced as 1 + γ"
        )
    if architecture == "phi3":
        return (
            "streaming Phi-3 is not implemented: its checkpoint fuses qkv_proj and gate_up_proj, "
            "which the export splits and the layer-by-layer reader does not"
        )
    return f"streaming {architecture} is not implemented"


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every parameter a Llama-layout decoder of ``config`` has, with its torch shape."""
    h, heads = config.hidden_size, config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    d = getattr(config, "head_dim", None) or h // heads
    mlp, vocab = config.intermediate_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING: (vocab, h), FINAL_NORM: (h,)}
    if not getattr(config, "tie_word_embeddings", False):
        shapes[LM_HEAD] = (vocab, h)
    bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (heads * d, h),
            p + "self_attn.k_proj.weight": (kv * d, h),
            p + "self_attn.v_proj.weight": (kv * d, h),
            p + "self_attn.o_proj.weight": (h, heads * d),
            p + "mlp.gate_proj.weight": (mlp, h),
            p + "mlp.up_proj.weight": (mlp, h),
            p + "mlp.down_proj.weight": (h, mlp),
        }
        if config.model_type == "qwen3":  # per-head q/k norms
            shapes |= {p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)}
        if bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (heads * d,),
                p + "self_attn.k_proj.bias": (kv * d,),
                p + "self_attn.v_proj.bias": (kv * d,),
            }
    return shapes


class Checkpoint:
    """``get(name) -> float32 array`` over a checkpoint whose names and shapes match its config.

    ``nbytes`` is the stored size of the weights (for memory estimates); ``close()`` releases the
    memory maps (also on ``with``)."""

    def __init__(
        self,
        config: Any,
        shapes: dict[str, tuple[int, ...]],
        read: Callable[[str], np.ndarray],
        nbytes: int,
        where: str,
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.config, self.shapes, self._read, self.nbytes = config, shapes, read, nbytes
        self.where, self._close = where, close
        self.tied = LM_HEAD not in shapes

    def stored_name(self, name: str) -> str:
        """The tensor that holds ``name`` (a tied lm_head is the embedding)."""
        return EMBEDDING if name == LM_HEAD and self.tied else name

    def get(self, name: str) -> np.ndarray:
        name = self.stored_name(name)
        if name not in self.shapes:
            raise SmoothrotError(f"{self.where}: no tensor {name}")
        return self._read(name)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_names(found: dict[str, tuple[int, ...]], config: Any, where: str) -> None:
    wanted = expected_shapes(config)
    mismatch = f"{where}: config.json does not match the weights"
    for name in sorted(set(wanted) - set(found))[:1]:
        raise SmoothrotError(f"{mismatch}: the config needs {name}, which the checkpoint lacks")
    for name in sorted(set(found) - set(wanted) - {LM_HEAD})[:1]:
        raise SmoothrotError(f"{mismatch}: the checkpoint holds {name}, which the config lacks")
    for name in sorted(wanted):
        if tuple(found[name]) != wanted[name]:
            raise SmoothrotError(
                f"{mismatch}: {name} is {list(found[name])} in the checkpoint but "
                f"{list(wanted[name])} by the config"
            )


def _shard_files(directory: Path) -> dict[str, Path]:
    """Tensor name → the safetensors file holding it."""
    index = directory / _INDEX
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise SmoothrotError(f"{index} has no weight_map")
        return {name: directory / str(file) for name, file in weight_map.items()}
    files = sorted(directory.glob("*.safetensors"))
    if len(files) != 1:
        raise SmoothrotError(f"{directory}: {len(files)} safetensors files and no {_INDEX}")
    return {name: files[0] for name in _header(files[0])}


def _header(path: Path) -> dict[str, dict[str, Any]]:
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


_READ_CHUNK = 1 << 24  # elements read and converted at once (64 MB of fp32)


def _read_tensor(path: Path, data_start: int, entry: dict[str, Any]) -> np.ndarray:
    """One tensor read into fresh fp32 memory a chunk at a time (no memory map: pages of a map
    stay resident and would make the process grow by every layer it has read; no whole bf16
    copy beside the fp32 result)."""
    begin, end = entry["data_offsets"]
    count = int(np.prod(entry["shape"], dtype=np.int64))
    dtype = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[entry["dtype"]]
    if count * np.dtype(dtype).itemsize != end - begin:
        raise SmoothrotError(f"{path}: tensor data size does not match its shape")
    out = np.empty(count, np.float32)
    with path.open("rb") as f:
        f.seek(data_start + begin)
        for start in range(0, count, _READ_CHUNK):
            n = min(_READ_CHUNK, count - start)
            raw = np.fromfile(f, dtype=dtype, count=n)
            if raw.size != n:
                raise SmoothrotError(f"{path}: tensor data is truncated")
            if entry["dtype"] == "BF16":  # bf16 is the upper half of an fp32
                bits = out[start : start + n].view(np.uint32)
                bits[:] = raw
                bits <<= 16
            else:
                out[start : start + n] = raw
    return out.reshape(entry["shape"])


def _lazy_safetensors(config: Any, directory: Path) -> Checkpoint:
    files = _shard_files(directory)
    headers = {path: _header(path) for path in sorted(set(files.values()))}
    starts = {path: 8 + int.from_bytes(path.open("rb").read(8), "little") for path in headers}
    shapes, nbytes = {}, 0
    for name, path in files.items():
        entry = headers[path].get(name)
        if entry is None:
            raise SmoothrotError(f"{path} does not hold {name}, which {_INDEX} maps to it")
        if entry["dtype"] not in _BYTES:
            raise SmoothrotError(f"{path}: {name} is {entry['dtype']}; bf16, fp16, fp32 only")
        shapes[name] = tuple(entry["shape"])
        nbytes += int(np.prod(entry["shape"])) * _BYTES[entry["dtype"]]
    _check_names(shapes, config, str(directory))

    def read(name: str) -> np.ndarray:
        path = files[name]
        return _read_tensor(path, starts[path], headers[path][name])

    return Checkpoint(config, shapes, read, nbytes, str(directory))


def _in_memory(source: ModelSource, allow_pickle: bool) -> Checkpoint:
    model, _ = load_torch_model(source, allow_pickle=allow_pickle)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if model.config.tie_word_embeddings:
        state.pop(LM_HEAD, None)
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    _check_names(shapes, model.config, str(source.path))
    nbytes = sum(t.numel() * t.element_size() for t in state.values())

    def read(name: str) -> np.ndarray:
        return state[name].detach().float().numpy().copy()

    return Checkpoint(model.config, shapes, read, nbytes, str(source.path))


def hf_config(source: ModelSource) -> Any:
    """The transformers config of an HF directory, never running the directory's code."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            str(source.path), trust_remote_code=False, local_files_only=True
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises anything on a bad config
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise SmoothrotError(f"cannot read {source.path / 'config.json'}: {reason}") from exc


def open_checkpoint(source: ModelSource, allow_pickle: bool = False) -> Checkpoint:
    """The weights of ``source``: memory-mapped safetensors for an HF directory, the loaded
    state dict for a GGUF file or pickles."""
    if source.kind is SourceKind.HF_DIR and check_weights(source.path, allow_pickle):
        return _lazy_safetensors(hf_config(source), source.path)
    return _in_memory(source, allow_pickle)
