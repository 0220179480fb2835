"""Saving and loading the learned policy's weights as safetensors (never pickle).

The file's metadata carries the format, the policy version, the feature schema, the
architecture, the blueprint vocabulary and a SHA-256 of the tensors; loading refuses a file
whose metadata, tensor names, shapes, vocabulary or digest do not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from esper.tamiyo.policies.errors import PolicyArtifactError
from esper.tamiyo.policies.features import (
    CANDIDATE_FEATURES,
    FEATURE_SCHEMA,
    GLOBAL_FEATURES,
    NODE_FEATURES,
)
from esper.tamiyo.policies.network import NetworkShape, PolicyNet
from esper.tamiyo.policies.vocabulary import BlueprintVocabulary

ARTIFACT_FORMAT = "esper-tamiyo-gnn"
ARTIFACT_FORMAT_VERSION = "1"
# A policy file is a few hundred KB; anything much larger is not one of ours.
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PolicyArtifact:
    net: PolicyNet
    vocabulary: BlueprintVocabulary
    version: str  # e.g. "gnn@3"
    path: str
    sha256: str  # of the file


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_policy(path: str | Path, net: PolicyNet, vocabulary: BlueprintVocabulary, version: str) -> str:
    """Write the artifact; returns the file's SHA-256."""
    if len(vocabulary) != net.shape.vocabulary:
        raise PolicyArtifactError(f"vocabulary has {len(vocabulary)} refs, the net {net.shape.vocabulary}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    metadata = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        "policy_version": version,
        "feature_schema": FEATURE_SCHEMA,
        "architecture": json.dumps(net.shape.as_dict(), sort_keys=True),
        "vocabulary": json.dumps(list(vocabulary.refs)),
        "vocabulary_version": vocabulary.version,
        "tensors_sha256": tensors_digest(tensors),
    }
    save_file(tensors, str(path), metadata=metadata)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _field(meta: dict[str, str], key: str) -> str:
    if key not in meta:
        raise PolicyArtifactError(f"policy artifact metadata lacks {key!r}")
    return meta[key]


def _shape_from(meta: dict[str, str]) -> NetworkShape:
    try:
        arch = json.loads(_field(meta, "architecture"))
        shape = NetworkShape(**arch)
    except (TypeError, ValueError) as exc:
        raise PolicyArtifactError(f"bad architecture metadata: {exc}") from exc
    sizes = (shape.node_features, shape.global_features, shape.candidate_features)
    if sizes != (NODE_FEATURES, GLOBAL_FEATURES, CANDIDATE_FEATURES):
        raise PolicyArtifactError("architecture feature sizes do not match this feature schema")
    if not (1 <= shape.hidden <= 1024 and 0 <= shape.layers <= 16 and 0 <= shape.dropout < 1):
        raise PolicyArtifactError(f"architecture out of range: {shape}")
    return shape


def _vocabulary_from(meta: dict[str, str], expected: BlueprintVocabulary | None) -> BlueprintVocabulary:
    try:
        vocab = BlueprintVocabulary.of(json.loads(_field(meta, "vocabulary")))
    except (TypeError, ValueError) as exc:
        raise PolicyArtifactError(f"bad vocabulary metadata: {exc}") from exc
    if vocab.version != _field(meta, "vocabulary_version"):
        raise PolicyArtifactError("vocabulary does not match its version")
    if expected is not None and vocab != expected:
        raise PolicyArtifactError(f"vocabulary {vocab.version} differs from the expected {expected.version}")
    return vocab


def load_policy(
    path: str | Path,
    *,
    expected_sha256: str | None = None,
    expected_vocabulary: BlueprintVocabulary | None = None,
) -> PolicyArtifact:
    """Load and validate an artifact; raise PolicyArtifactError on any mismatch."""
    p = Path(path)
    if not p.is_file():
        raise PolicyArtifactError(f"no policy artifact at {p}")
    if p.stat().st_size > MAX_ARTIFACT_BYTES:
        raise PolicyArtifactError(f"policy artifact {p} is larger than {MAX_ARTIFACT_BYTES} bytes")
    raw = p.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if expected_sha256 and digest != expected_sha256.lower():
        raise PolicyArtifactError(f"policy artifact digest {digest} != expected {expected_sha256}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise PolicyArtifactError(f"not a readable safetensors file: {exc}") from exc
    if _field(meta, "format") != ARTIFACT_FORMAT or _field(meta, "format_version") != ARTIFACT_FORMAT_VERSION:
        raise PolicyArtifactError(f"not a {ARTIFACT_FORMAT} v{ARTIFACT_FORMAT_VERSION} artifact")
    if _field(meta, "feature_schema") != FEATURE_SCHEMA:
        raise PolicyArtifactError(f"feature schema {meta['feature_schema']!r} != {FEATURE_SCHEMA!r}")
    if tensors_digest(tensors) != _field(meta, "tensors_sha256"):
        raise PolicyArtifactError("tensor contents do not match their recorded SHA-256 (tampered?)")
    shape, vocab = _shape_from(meta), _vocabulary_from(meta, expected_vocabulary)
    if shape.vocabulary != len(vocab):
        raise PolicyArtifactError("architecture vocabulary size differs from the vocabulary")
    net = PolicyNet(shape)
    _check_tensors(net, tensors)
    net.load_state_dict(tensors, strict=True)
    net.eval()
    return PolicyArtifact(net, vocab, _field(meta, "policy_version"), str(p), digest)


def _check_tensors(net: PolicyNet, tensors: dict[str, torch.Tensor]) -> None:
    want = {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}
    got = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    if set(want) != set(got):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise PolicyArtifactError(f"tensor names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    bad = [k for k in want if want[k] != got[k]]
    if bad:
        raise PolicyArtifactError(f"tensor shapes/dtypes differ for {bad[:5]}")
    if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
        raise PolicyArtifactError("policy weights contain NaN or Inf")
