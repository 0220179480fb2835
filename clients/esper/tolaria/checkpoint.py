"""Checkpoint and resume of a training session, without pickling any custom object.

A checkpoint is one `torch.save` of a plain dict of tensors, primitives and bytes, loaded
with `torch.load(weights_only=True)`: the model (host and seed weights), the optimizer
(seed param groups included, with their order), every seed's state via Kasmina, the
seed -> kernel -> blueprint map with kernel digests, pending decisions as serialized
protos, acked decision ids, the session's metrics/outcome/policy state, the RNG states
(torch, CUDA, numpy, python) and the training loop's position (epoch, batch).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from esper.kasmina import kasmina_state, load_kasmina_state
from esper.kasmina.state import builder_rebuilder
from esper.leyline.v1.control_pb2 import AdaptationDecision

FORMAT = "esper-tolaria-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored into this session, with the reason."""


# ---- RNG -------------------------------------------------------------------------------------
def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- save --------------------------------------------------------------------------------------
def session_state(session, loop: dict | None = None) -> dict:
    """Everything needed to resume `session` (and the loop position given by the caller)."""
    model = session.model
    kernels = {
        s.slot_id: {"blueprint_ref": s.record.blueprint_ref, "kernel_id": s.record.kernel_id,
                    "kernel_digest": s.record.kernel_digest}
        for s in model.slots.values() if s.seed is not None or s.record.seed_id
    }
    policy_state = {name: src.state_dict() for name, src in
                    (("policy", session.policy), ("fallback", session.fallback))
                    if src is not None and hasattr(src, "state_dict")}
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "run_id": session.run_id,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": session.optimizer.state_dict(),
        "seed_groups": session.groups.seed_slots(),
        "kasmina": kasmina_state(model, session.applier.answered),
        "seed_kernels": kernels,
        "pending": [d.SerializeToString() for d in session.pending],
        "session": {
            "sequence": session.sequence, "last_applied": session.last_applied_decision_id,
            "metrics": session.metrics.state_dict(), "outcomes": session.outcomes.state_dict(),
            "policies": policy_state, "ack_counts": dict(session.ack_counts),
            "waits": session.waits, "seed_log": session.seed_log.state_dict(),
            "flops": session.flops.state_dict(model.global_step),
        },
        "rng": rng_state(),
        "loop": dict(loop or {}),
    }


def save_checkpoint(path: str | os.PathLike, session, loop: dict | None = None) -> Path:
    """Write the checkpoint atomically (temp file, then rename). Under torch.distributed
    rank 0 writes it (every rank holds the same state) and the other ranks return at once,
    so it may be called on every rank or on rank 0 alone."""
    path = Path(path)
    replicas = getattr(session, "replicas", None)
    if replicas is not None and not replicas.leader:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(session_state(session, loop), tmp)
    os.replace(tmp, path)
    return path


# ---- load --------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint (weights_only: no object is unpickled) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a Tolaria checkpoint")
    if state.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r} is not "
                              f"supported (expected {FORMAT_VERSION})")
    return state


def restore_session(session, state: dict, *, restore_rng: bool = True) -> dict:
    """Restore `state` into a freshly attached (not yet started) session of the same model
    architecture; returns the saved loop position."""
    if state["run_id"] != session.run_id:
        raise CheckpointError(f"checkpoint is of run {state['run_id']!r}, the session is "
                              f"{session.run_id!r}")
    _make_kernels_available(session, state["seed_kernels"])
    try:
        answered = load_kasmina_state(session.model, state["kasmina"],
                                      builder_rebuilder(session.seed_builder))
        session.model.load_state_dict(state["model"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint does not fit this model: {exc}") from exc
    try:  # the checkpoint's group order (the schedulers' entries move along)
        session.groups.reorder(state["seed_groups"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint: {exc}") from exc
    session.optimizer.load_state_dict(state["optimizer"])
    session.applier.answered = set(answered)
    session.pending = [AdaptationDecision.FromString(raw) for raw in state["pending"]]
    saved = state["session"]
    session.sequence = int(saved["sequence"])
    session.last_applied_decision_id = saved["last_applied"]
    session.metrics.load_state_dict(saved["metrics"])
    session.outcomes.load_state_dict(saved["outcomes"])
    session.ack_counts.update({int(k): int(v) for k, v in saved["ack_counts"].items()})
    # Checkpoints written before the typed summary lack these: they start empty.
    session.waits = int(saved.get("waits", 0))
    session.seed_log.load_state_dict(saved.get("seed_log", []))
    if "flops" in saved:
        session.flops.load_state_dict(saved["flops"])
    for name, policy_state in saved["policies"].items():
        source = getattr(session, name)
        if source is not None and hasattr(source, "load_state_dict"):
            source.load_state_dict(policy_state)
    session.reset_health()
    if restore_rng:
        set_rng_state(state["rng"])
    return dict(state["loop"])


def _make_kernels_available(session, seed_kernels: dict) -> None:
    """Put every seed's kernel bytes in the cache: local kernels are rebuilt (same bytes,
    same id); others are fetched now (blocking is fine while resuming)."""
    for slot_id, ref in seed_kernels.items():
        kernel_id, digest = ref["kernel_id"], ref["kernel_digest"]
        if not kernel_id or kernel_id in session.cache:
            continue
        if session.local_kernels is not None and slot_id in session.model.slots:
            session.local_kernels.kernels_for(session.model.slot(slot_id).shape)
        if kernel_id not in session.cache:
            try:
                data = session.cache.get(kernel_id, digest)
            except Exception as exc:
                raise CheckpointError(f"kernel {kernel_id} of slot {slot_id} is not available: "
                                      f"{exc}") from exc
            session._learn_blueprint(ref["blueprint_ref"], data)

