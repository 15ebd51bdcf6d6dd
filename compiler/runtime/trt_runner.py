"""TensorRT runner for a ``smoothrot build`` directory: same interface as ``OrtDecoder``.

One execution context per optimization profile (0 prefill, 1 decode; see
``compiler/targets/trt/engine.py``).
Buffers are torch CUDA tensors; the KV cache stays on the GPU between steps (``past`` is a
list of device tensors) and only the logits come back to the host. Needs an NVIDIA GPU, torch
with CUDA, and the TensorRT flavour the engine was built with (``build.json``'s backend).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smoothrot.compiler.runtime.ort_runner import greedy_generate
from smoothrot.core.errors import SmoothrotError
from smoothrot.core.manifest import Manifest, load_manifest
from smoothrot.core.tensorrt import ENGINE_FILE, TrtBackend, load_trt, trt_logger

__all__ = ["TrtDecoder"]
_PREFILL, _DECODE = 0, 1


def _torch_cuda():  # noqa: ANN202 - torch is imported lazily
    import torch

    if not torch.cuda.is_available():
        raise SmoothrotError("--backend trt needs an NVIDIA GPU and torch with CUDA; none found")
    return torch


class TrtDecoder:
    """Runs ``engine.trt`` of a build directory on the GPU."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest: Manifest = load_manifest(self.directory)
        engine_path = self.directory / ENGINE_FILE
        if not engine_path.is_file():
            raise SmoothrotError(f"{directory} has no {ENGINE_FILE}; run `smoothrot build` first")
        built = json.loads((self.directory / "build.json").read_text())
        self.torch = _torch_cuda()
        _, trt = load_trt(TrtBackend(built["backend"]))
        self.runtime = trt.Runtime(trt_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise SmoothrotError(f"{engine_path} does not deserialize on this GPU / TensorRT")
        self.stream = self.torch.cuda.Stream()
        self.contexts = []
        for profile in (_PREFILL, _DECODE):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self.contexts.append(context)
        self.max_prompt = self.engine.get_tensor_profile_shape("input_ids", _PREFILL)[2][1]
        self.max_cached = self.engine.get_tensor_profile_shape("past.0.key", _DECODE)[2][2]

    def empty_cache(self, batch: int = 1) -> list[Any]:
        return []

    def forward(
        self, input_ids: np.ndarray, past: list[Any] | None = None
    ) -> tuple[np.ndarray, list[Any]]:
        """Logits ``[1, S, V]`` (fp32, host) and the present cache (device tensors)."""
        torch, dims = self.torch, self.manifest.dims
        ids = np.asarray(input_ids, np.int64)
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise SmoothrotError(f"the TensorRT runner decodes batch 1, got input {ids.shape}")
        seq, cached = ids.shape[1], (past[0].shape[2] if past else 0)
        if cached == 0 and seq > self.max_prompt:
            raise SmoothrotError(f"prompt of {seq} tokens > the engine's {self.max_prompt}")
        if cached and (seq != 1 or cached > self.max_cached):
            raise SmoothrotError(
                f"the decode profile takes 1 token after 1..{self.max_cached} cached, "
                f"got {seq} after {cached}"
            )
        context = self.contexts[_DECODE if cached else _PREFILL]
        device = torch.device("cuda")
        total = cached + seq
        feeds = {
            "input_ids": torch.from_numpy(ids).to(device),
            "attention_mask": torch.ones((1, total), dtype=torch.int64, device=device),
            "position_ids": torch.arange(cached, total, device=device)[None],
        }
        if not past:
            empty = (1, dims.kv_heads, 0, dims.head_dim)
            past = [torch.empty(empty, dtype=torch.float16, device=device)] * len(
                self.manifest.past_names
            )
        feeds.update(zip(self.manifest.past_names, past, strict=True))
        logits = torch.empty((1, seq, dims.vocab), dtype=torch.float32, device=device)
        grown = (1, dims.kv_heads, total, dims.head_dim)
        present = [torch.empty(grown, dtype=torch.float16, device=device) for _ in past]
        outputs = dict(zip(self.manifest.outputs, [logits, *present], strict=True))
        for name, tensor in feeds.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        for name, tensor in outputs.items():
            context.set_tensor_address(name, tensor.data_ptr())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise SmoothrotError("TensorRT failed to run the engine")
        self.stream.synchronize()
        return logits.cpu().numpy(), present

    def generate(
        self, prompt_ids: Sequence[int], max_new_tokens: int, eos_ids: Sequence[int] = ()
    ) -> list[int]:
        return greedy_generate(self.forward, prompt_ids, max_new_tokens, eos_ids)
