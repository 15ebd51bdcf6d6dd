import numpy as np
import pytest

from smoothrot.compiler.config import EvalConfig
from smoothrot.compiler.measure.corpus import CorpusPart, corpus_part
from smoothrot.compiler.measure.perplexity import perplexity, windows
from smoothrot.core.errors import SmoothrotError


def test_uniform_logits_give_vocab_size():
    result = perplexity(
        lambda x: np.zeros((*x.shape, 100)), list(range(64)), EvalConfig(16, 4), False
    )
    assert result.ppl == pytest.approx(100.0)
    assert result.tokens == 4 * 15


def test_perfect_prediction_gives_one():
    ids = np.arange(40) % 7

    def oracle(x: np.ndarray) -> np.ndarray:
        logits = np.full((*x.shape, 7), -1e4)
        nxt = np.roll(x, -1, axis=1)
        np.put_along_axis(logits, nxt[..., None], 0.0, axis=-1)
        return logits

    assert perplexity(oracle, ids.tolist(), EvalConfig(8, 5), False).ppl == pytest.approx(1.0)


def test_windows_are_non_overlapping_from_the_start():
    w = windows(list(range(100)), EvalConfig(10, 3))
    assert w.tolist() == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]


def test_text_too_short():
    with pytest.raises(SmoothrotError, match="text too short"):
        windows(list(range(10)), EvalConfig(8, 2))


def test_corpus_split_is_disjoint_and_large_enough():
    ev, cal = corpus_part(CorpusPart.EVALUATION), corpus_part(CorpusPart.CALIBRATION)
    assert len(ev) > 150_000 and len(cal) > 150_000
    assert ev[-2000:] not in cal and cal[:2000] not in ev
    assert corpus_part(CorpusPart.EVALUATION) == ev  # deterministic


def test_eval_config_validation():
    with pytest.raises(ValueError):
        EvalConfig(seq=1)
    with pytest.raises(ValueError):
        EvalConfig(windows=0)
