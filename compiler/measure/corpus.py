"""The built-in text: CPython's ``pydoc_data.topics``, split once into evaluation and calibration.

The split is fixed and documented: the topics are joined in sorted-key order with blank lines;
the **evaluation** part is the topics from the start up to the first topic boundary at or past
half of the characters, the **calibration** part is everything after it. The parts are disjoint,
so calibration never sees a token that perplexity is measured on. ``text_digest`` identifies the
exact text (it differs between CPython releases) and is reported next to every perplexity.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

__all__ = ["CorpusPart", "corpus_part", "text_digest"]


class CorpusPart(enum.Enum):
    EVALUATION = "evaluation"
    CALIBRATION = "calibration"


@dataclass(frozen=True)
class _Split:
    evaluation: str
    calibration: str


def _split() -> _Split:
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    half = sum(len(t) for t in texts) // 2
    seen, cut = 0, len(texts)
    for i, t in enumerate(texts):
        seen += len(t)
        if seen >= half:
            cut = i + 1
            break
    return _Split("\n\n".join(texts[:cut]), "\n\n".join(texts[cut:]))


def corpus_part(part: CorpusPart) -> str:
    split = _split()
    return split.evaluation if part is CorpusPart.EVALUATION else split.calibration


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
