"""Plugin-kernel tests: without CUDA the Triton kernels run in Triton's interpreter.

``@triton.jit`` decides when it decorates (Triton's own ``triton.language`` helpers at
``import triton``, our kernels when their modules are imported) whether it builds a compiled or
an interpreted kernel, from ``TRITON_INTERPRET``. This conftest is imported before anything in
this package imports Triton: it sets the variable, imports Triton, pins the mode with Triton's
runtime knob and removes the variable again, so other tests' subprocesses never see it. No other
test package imports Triton.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    user_set = "TRITON_INTERPRET" in os.environ
    os.environ["TRITON_INTERPRET"] = "1"
    import triton

    triton.knobs.runtime.interpret = True
    if not user_set:
        del os.environ["TRITON_INTERPRET"]

import triton  # noqa: E402

INTERPRET = bool(triton.knobs.runtime.interpret)
if not torch.cuda.is_available() and not INTERPRET:
    raise RuntimeError(
        "Triton was imported before tests/plugins/conftest.py could switch it to its "
        "interpreter; run with TRITON_INTERPRET=1, or import Triton only inside tests"
    )
DEVICE = torch.device("cpu" if INTERPRET else "cuda")


@pytest.fixture
def device() -> torch.device:
    return DEVICE
