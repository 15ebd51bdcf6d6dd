"""What every smoothrot pass and pipeline shares: results that say what was done, precondition
errors a user can read, and a pass manager that keeps each step's result.

A pass keeps only its configuration on ``self``; everything it did (layers lowered, nodes left
alone and why, counts) comes back in its :class:`PassReport`. A pipeline is a
:class:`Pipeline`, an ``onnx_ir`` ``PassManager`` whose steps are named, timed and returned in
order in a :class:`PipelineResult`, and whose errors are the passes' own (a user mistake stays a
one-line ``ValueError``, never a wrapped ``PassError``).

For tests of interruption, ``SMOOTHROT_FAULT_AT=STEP`` (or ``STEP:SIGNAL``, e.g.
``quantize_weights:SIGHUP``) makes a pipeline send its own process that signal (SIGTERM by
default) right before it runs the step of that name: the process stops at a known point. Other
drivers name their own points with :func:`fault_point` (a streamed compile: ``layer.K``).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from smoothrot.core.errors import SmoothrotError

__all__ = [
    "FAULT_AT_ENV",
    "PassPreconditionError",
    "PassReport",
    "Pipeline",
    "PipelineResult",
    "StepResult",
    "fault_point",
    "pass_name",
]

log = logging.getLogger("smoothrot.pipeline")
FAULT_AT_ENV = "SMOOTHROT_FAULT_AT"


@dataclass
class PassReport(ir.passes.PassResult):
    """``PassResult`` plus ``details``: what the pass did, for reports and callers."""

    details: dict[str, Any] = field(default_factory=dict)


class PassPreconditionError(ir.passes.PreconditionError, SmoothrotError):
    """A pass's ``requires`` refused its input (the message says what is wrong and what to run
    first). A ``ValueError`` too, so the command line prints it as one line."""


def pass_name(p: ir.passes.PassBase) -> str:
    """A pass's step name: its ``name`` attribute, else its class name."""
    return getattr(p, "name", None) or type(p).__name__


def fault_point(name: str) -> None:
    """Signal this process if ``SMOOTHROT_FAULT_AT`` names step ``name`` (see the module doc)."""
    wanted = os.environ.get(FAULT_AT_ENV)
    if not wanted:
        return
    step, _, signame = wanted.partition(":")
    if step == name:
        os.kill(os.getpid(), signal.Signals[signame or "SIGTERM"])


@dataclass(frozen=True)
class StepResult:
    name: str
    seconds: float
    result: ir.passes.PassResult

    @property
    def details(self) -> dict[str, Any]:
        return getattr(self.result, "details", {})

    def stage_row(self) -> dict[str, Any]:
        """The row a model directory's manifest records for this step."""
        return {"stage": self.name, "seconds": round(self.seconds, 2), "modified": self.modified}

    @property
    def modified(self) -> bool:
        return self.result.modified


@dataclass
class PipelineResult(ir.passes.PassResult):
    steps: list[StepResult] = field(default_factory=list)

    def step(self, name: str) -> StepResult | None:
        """The last step called ``name``, or None if the pipeline had none."""
        return next((s for s in reversed(self.steps) if s.name == name), None)

    def details(self, name: str) -> dict[str, Any]:
        step = self.step(name)
        return step.details if step is not None else {}


class Pipeline(ir.passes.PassManager):
    """Named passes run once, in order; each step timed and kept in the result.

    ``after_step(name, model)`` (optional) runs after every step, e.g. to save the graph.
    Exceptions propagate unchanged: a pass that refuses bad input raises a ``ValueError`` that
    reaches the command line as one line.
    """

    def __init__(
        self,
        passes: Sequence[ir.passes.PassBase],
        after_step: Callable[[str, ir.Model], None] | None = None,
    ) -> None:
        super().__init__(passes, steps=1, early_stop=False)
        self.after_step = after_step

    @property
    def names(self) -> list[str]:
        return [pass_name(p) for p in self.passes]

    def call(self, model: ir.Model) -> PipelineResult:
        steps: list[StepResult] = []
        for p in self.passes:
            name = pass_name(p)
            fault_point(name)
            start = time.perf_counter()
            result = p(model)
            seconds = time.perf_counter() - start
            log.info("%s in %.2fs", name, seconds)
            model = result.model
            steps.append(StepResult(name, seconds, result))
            if self.after_step is not None:
                self.after_step(name, model)
        return PipelineResult(model, any(s.modified for s in steps), steps)
