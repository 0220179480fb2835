"""The blueprint vocabulary of the learned policy: a fixed, ordered list of blueprint refs.

The blueprint head has one output per ref, so weights are only meaningful with the
vocabulary they were trained with; the vocabulary (and its content-derived version) is
saved in the weight artifact and checked on load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

# The built-in catalogue's refs at the time this vocabulary was fixed. A policy trained on
# another catalogue carries its own vocabulary in its artifact.
DEFAULT_REFS: tuple[str, ...] = (
    "BP-MLP-GELU@1.0.0",
    "BP-MLP-SWIGLU@1.0.0",
    "BP-LORA@1.0.0",
    "BP-IA3@1.0.0",
    "BP-LAYERNORM@1.0.0",
    "BP-RMSNORM@1.0.0",
    "BP-CONV-RES3X3@1.0.0",
    "BP-CONV-DWSEP@1.0.0",
    "BP-CONV-SE@1.0.0",
    "BP-ATTN-MHA@1.0.0",
    "BP-ATTN-GQA-ROPE@1.0.0",
    "BP-MOE@1.0.0",
    "BP-DIAG-MONITOR@1.0.0",
    "BP-DIAG-GRADCLAMP@1.0.0",
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
    """The vocabulary of the built-in catalogue when it is importable, else DEFAULT_REFS."""
    try:
        from esper.blueprints.catalog import builtin_blueprints  # type: ignore[import-not-found]
    except ImportError:
        return BlueprintVocabulary(DEFAULT_REFS)
    refs = sorted(f"{b.name}@{b.version}" for b in builtin_blueprints())
    return BlueprintVocabulary(tuple(refs)) if refs else BlueprintVocabulary(DEFAULT_REFS)
