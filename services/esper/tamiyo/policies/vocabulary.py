"""The blueprint vocabulary of the learned policy: a fixed, ordered list of blueprint refs.

The blueprint head has one output per ref, so weights are only meaningful with the
vocabulary they were trained with; the vocabulary (and its content-derived version) is
saved in the weight artifact and checked on load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

# The built-in catalogue's refs (esper.blueprints.builtin_blueprints()) when this vocabulary
# was fixed, sorted. Never reorder: a trained blueprint head indexes into it. A catalogue that
# grows gets a new vocabulary (new content, new version) and a retrained policy; a unit test
# flags built-in blueprints missing from it.
DEFAULT_REFS: tuple[str, ...] = (
    "BP-ATTN-GQA-ROPE@1.0.0",
    "BP-ATTN-MHA@1.0.0",
    "BP-CONV-DWSEP@1.0.0",
    "BP-CONV-RES3X3@1.0.0",
    "BP-CONV-SE@1.0.0",
    "BP-CONV1D-RES3@1.0.0",
    "BP-DIAG-ACTSTATS@1.0.0",
    "BP-DIAG-GRADCLAMP@1.0.0",
    "BP-IA3@1.0.0",
    "BP-LORA-R64@1.0.0",
    "BP-LORA-R8@1.0.0",
    "BP-MLP-GELU@1.0.0",
    "BP-MLP-SWIGLU@1.0.0",
    "BP-MOE-TOP2@1.0.0",
    "BP-NORM-LAYER@1.0.0",
    "BP-NORM-RMS@1.0.0",
    # Appended with width growth (a new vocabulary version: policies are retrained).
    "BP-WIDEN-HALF@1.0.0",
)


@dataclass(frozen=True)
class BlueprintVocabulary:
    """Ordered blueprint refs; `version` is derived from the content."""

    refs: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.refs)) != len(self.refs):
            raise ValueError("blueprint vocabulary has duplicate refs")
        if not all(isinstance(r, str) and "@" in r for r in self.refs):
            raise ValueError("blueprint vocabulary refs must be 'name@version' strings")

    @property
    def version(self) -> str:
        digest = hashlib.sha256("\n".join(self.refs).encode()).hexdigest()
        return f"vocab-{digest[:12]}"

    def __len__(self) -> int:
        return len(self.refs)

    def index(self, ref: str) -> int | None:
        try:
            return self.refs.index(ref)
        except ValueError:
            return None

    @classmethod
    def of(cls, refs: Iterable[str]) -> BlueprintVocabulary:
        return cls(tuple(refs))


def default_vocabulary() -> BlueprintVocabulary:
    """The fixed vocabulary an untrained policy starts with."""
    return BlueprintVocabulary(DEFAULT_REFS)
