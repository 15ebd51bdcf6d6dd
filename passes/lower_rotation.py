"""Lower each online Hadamard rotation to one ``smoothrot.ort::KroneckerRotation`` node.

``OnlineRotationPass`` writes ``y = x · (A ⊗ B)`` as four standard nodes (see
``online_rotation.py``)::

    Reshape(x, [0, 0, m, p]) → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape(·, [0, 0, n])

which ONNX Runtime runs as four dispatches with three intermediate tensors: about 60–95 µs per
site on a 2-core CPU, against a few µs of arithmetic. Our op computes the same values in one
node, with a fast Walsh–Hadamard transform for ``B``. The chain is matched exactly by the rule
:class:`~smoothrot.passes.rules.rotation.KroneckerRotation` — every node marked
``smoothrot.rotation = online``, float32, each intermediate read only by the next node, ``B`` the
normalized Sylvester matrix ``H_p/√p`` — and anything else marked as a rotation is reported by
name in ``skipped`` and left as it is.
"""

from __future__ import annotations

import enum

import onnx_ir as ir

from smoothrot.core.pass_infra import PassReport
from smoothrot.ortops.spec import DOMAIN as ORTOPS_DOMAIN
from smoothrot.passes.rules.rotation import KroneckerRotation, is_rotation_start, lower_rotation

__all__ = ["LowerRotationPass", "RotationKernel"]


class RotationKernel(enum.StrEnum):
    ORTOPS = "ortops"  # one smoothrot.ort::KroneckerRotation node per site (our custom op)
    MATMUL = "matmul"  # left as Reshape → MatMul → MatMul → Reshape (standard ONNX ops)


class LowerRotationPass(ir.passes.InPlacePass):
    """``details``: ``lowered`` (count), ``skipped`` (first node's name → why it stays)."""

    name = "lower_rotation"

    def call(self, model: ir.Model) -> PassReport:
        rule, lowered, skipped = KroneckerRotation().rule(), 0, {}
        for first in [n for n in model.graph if is_rotation_start(n)]:
            outcome = lower_rotation(rule, model, first)
            if outcome:
                lowered += 1
            else:
                skipped[first.name or "?"] = outcome.reason
        if lowered:
            model.opset_imports.setdefault(ORTOPS_DOMAIN, 1)
        return PassReport(model, lowered > 0, {"lowered": lowered, "skipped": skipped})
