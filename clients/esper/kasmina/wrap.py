"""wrap(): put seed slots into any PyTorch model without changing what it computes.

State-dict scheme: the host's keys are unchanged (`fc1.weight` stays `fc1.weight`),
and each seed's weights are added under `esper_slots.<key>.seed.*`, where `<key>` is the
slot id with '.' replaced by '__' (module dicts cannot hold dots). A wrapped model with
only dormant slots therefore has exactly the original state_dict.

Slots follow their host module through forward hooks, installed only while a seed needs
one: a DORMANT slot installs no hook, so the wrapped model runs the original code path.
Each stage change swaps the hook; under torch.compile that is a guard change and
triggers one recompile (correct results, never a silent fallback).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import fx, nn

from esper.kasmina.config import KasminaConfig
from esper.kasmina.merge import residual_module
from esper.kasmina.shapes import (
    SlotSite,
    channels_of,
    default_kind,
    fused_descendants,
    is_eligible,
    module_device_dtype,
    observe_shapes,
)
from esper.kasmina.slot import SeedSlot
from esper.kasmina.stream import StreamSite, declared
from esper.kasmina.widen import WidenSeed, find_widen_sites, merged_layers, rng_seed_for
from esper.leyline import lifecycle
from esper.leyline.v1.common_pb2 import SlotKind, SlotShape
from esper.leyline.v1.control_pb2 import CullReason
from esper.leyline.v1.lifecycle_pb2 import SeedStage, SeedState
from esper.leyline.v1.signals_pb2 import ModelGraph, ResidualStreamState
from esper.leyline.v1.telemetry_pb2 import SeedTransition

HOST_PREFIX = "host."
# The stages tick_embargo moves on from (any other slot has no embargo to end).
_EMBARGO_STAGES = frozenset({SeedStage.SEED_STAGE_EMBARGOED, SeedStage.SEED_STAGE_RESETTING})
SLOTS_ATTR = "esper_slots"
SlotChoice = None | Iterable[str] | Callable[[str, nn.Module], bool]
SeedListener = Callable[[SeedSlot, list[nn.Parameter]], None]
# Told old parameter -> new one after the residual stream widened (optimizer state moves).
StreamListener = Callable[[dict[nn.Parameter, nn.Parameter]], None]


def slot_key(slot_id: str) -> str:
    """The ModuleDict key of a slot id (dots are not allowed in module names)."""
    return slot_id.replace(".", "__")


class MorphableModel(nn.Module):
    """A host model with seed slots. Calls, attributes and state_dict keys pass through
    to the host; `slots` maps slot id -> SeedSlot."""

    def __init__(self, host: nn.Module, sites: list[SlotSite], cfg: KasminaConfig,
                 stream: StreamSite | None = None) -> None:
        super().__init__()
        self.host = host
        self.cfg = cfg
        # The host's residual stream, when it declares one (esper.kasmina.stream).
        self.__dict__["stream"] = stream
        # Why this process cannot widen the stream now (e.g. under torch.distributed), or None.
        self.stream_frozen: str | None = None
        self.stream_listeners: list[StreamListener] = []
        self.esper_slots = nn.ModuleDict()
        self.transitions: list[SeedTransition] = []
        self.transition_listeners: list[Callable[[SeedTransition], None]] = []
        self.seed_added_listeners: list[SeedListener] = []
        self.seed_removed_listeners: list[SeedListener] = []
        self.global_step = 0
        self.epoch = 0
        for site in sites:
            below = None
            for level in range(1, cfg.slot_depth + 1):  # a stack: each level on the one below
                slot_id = lifecycle.stacked_slot_id(site.node_id, level)
                below = SeedSlot(slot_id, site, cfg, self, below=below)
                self.esper_slots[slot_key(slot_id)] = below
        # The slots as a plain list, for the safe point's loop (no nn.Module attribute
        # lookup), and those holding a live seed, the only ones a step has work for: kept by
        # transition(), refreshed at each safe point and by refresh_live().
        self._slot_list = list(self.esper_slots.values())
        self._live_slots: list[SeedSlot] = []
        self._parameter_list: list[nn.Parameter] | None = None  # parameter_list()'s
        self._register_state_dict_hook(_strip_host_prefix)
        self._register_load_state_dict_pre_hook(_add_host_prefix)

    def forward(self, *args, **kwargs):
        return self.host(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("host"), name)

    @property
    def slots(self) -> dict[str, SeedSlot]:
        return {slot.slot_id: slot for slot in self.esper_slots.values()}

    def slot(self, slot_id: str) -> SeedSlot:
        key = slot_key(slot_id)
        if key not in self.esper_slots or self.esper_slots[key].slot_id != slot_id:
            raise KeyError(f"unknown slot {slot_id!r}; slots: {sorted(self.slots)}")
        return self.esper_slots[key]

    def parameter_list(self) -> list[nn.Parameter]:
        """The model's parameters, host and seeds, in parameters() order, kept from one
        change of them to the next: a safe point reads them without walking the modules
        (a walk costs ~35 us at a safe point on a small CPU step, cold caches). Seeds change
        them only through the events below (a seed added or removed; a stage change, which
        a merge into the host is), and moving the model (`.to()`, `.half()`) through
        `_apply`: each forgets the list. A module registered by hand after wrapping is not
        seen until the next of them."""
        if self._parameter_list is None:
            self.__dict__["_parameter_list"] = list(self.parameters())
        return self._parameter_list

    def _forget_parameters(self) -> None:
        self.__dict__["_parameter_list"] = None

    def _apply(self, *args, **kwargs):
        self._forget_parameters()  # .to() may replace parameters (e.g. swap_module_params)
        return super()._apply(*args, **kwargs)

    # ---- SlotEvents ------------------------------------------------------------------
    def transition(self, event: SeedTransition) -> None:
        event.epoch = self.epoch
        self.transitions.append(event)
        self._forget_parameters()
        self.refresh_live()
        for listener in self.transition_listeners:
            listener(event)

    def seed_added(self, slot: SeedSlot, params: list[nn.Parameter]) -> None:
        self._forget_parameters()
        for listener in self.seed_added_listeners:
            listener(slot, params)

    def seed_removed(self, slot: SeedSlot, params: list[nn.Parameter]) -> None:
        self._forget_parameters()
        for listener in self.seed_removed_listeners:
            listener(slot, params)

    # ---- training-loop calls ---------------------------------------------------------
    def seed_step(self) -> None:
        """Call once per training step after backward (before zero_grad). No host sync."""
        # Straight into __dict__: nn.Module.__setattr__ is a slow path for a counter, and on
        # a small step every microsecond of this call shows (touching each dormant slot's
        # record too: ~10 us a step for two slots in a training loop, cold caches).
        self.__dict__["global_step"] += 1
        for slot in self._live_slots:
            slot.on_step()

    def refresh_live(self) -> None:
        """Find the slots holding a live seed again (after a slot's stage changed other
        than by a transition, e.g. a record restored from a checkpoint)."""
        live = lifecycle.LIVE_STAGES
        self._live_slots = [slot for slot in self._slot_list if slot.record.stage in live]

    def seed_epoch(self) -> None:
        self.epoch += 1
        for slot in self.esper_slots.values():
            slot.on_epoch()

    def safe_point(self, loss: float | None = None,
                   breaker_loss: float | None = None) -> list[SeedTransition]:
        """Between steps: read device accumulators, feed `loss` (validation loss when the
        caller has one, else a smoothed train loss) to live seeds, trip circuit breakers
        (cull at once) on `breaker_loss` (the latest unsmoothed loss; `loss` when not
        given), end elapsed embargoes. Returns the transitions made."""
        start = len(self.transitions)
        live = lifecycle.LIVE_STAGES
        for slot in self._slot_list:
            if slot.record.stage in live:  # a dormant slot has nothing to read or trip
                slot.flush()
                if loss is not None:
                    slot.record.observe_loss(float(loss))
                why = slot.tripped(loss if breaker_loss is None else breaker_loss)
                if why is not None:
                    slot.cull(self.global_step, CullReason.CULL_REASON_INSTABILITY, why)
            if slot.record.stage in _EMBARGO_STAGES:  # (a slot culled just now included)
                slot.tick_embargo(self.global_step)
        self.refresh_live()
        return self.transitions[start:]

    # ---- residual stream ------------------------------------------------------------------
    def stream_tensors(self) -> list[tuple[str, nn.Parameter | torch.Tensor]]:
        """The parameters and buffers of the modules on the residual stream (those a
        widening replaces), by qualified name, in module order; [] without a stream."""
        if self.stream is None:
            return []
        names = self.stream.names()
        prefix = "host."
        return [(name, tensor) for name, tensor in (*self.named_parameters(), *self.named_buffers())
                if name.startswith(prefix) and _on(name[len(prefix):].rpartition(".")[0], names)]

    def stream_state(self) -> ResidualStreamState | None:
        """The residual stream as a policy sees it (None when the host declares none)."""
        site = self.stream
        if site is None:
            return None
        return ResidualStreamState(
            width=site.width, declared_width=site.declared_width, max_width=site.max_width,
            feature_multiple=site.feature_multiple, params_per_feature=site.params_per_feature(),
            widenings=site.widenings, last_widened_step=site.last_widened_step,
            params_added=site.params_added, last_widened_epoch=site.last_widened_epoch)

    def stream_blockers(self) -> list[str]:
        """Slots on or inside a stream module holding a seed (sized to the stream as it is:
        the stream stays as wide while one is there)."""
        names = self.stream.names() if self.stream is not None else ()
        return [slot.slot_id for slot in self._slot_list
                if slot.stage != SeedStage.SEED_STAGE_DORMANT and _on(slot.node_id, names)]

    def widen_stream(self, features: int) -> int:
        """Widen the host's residual stream by `features` (esper.kasmina.stream) at this
        step; returns the parameters added. Raises ValueError when refused (nothing
        changed)."""
        site = self.stream
        if site is None:
            raise ValueError(f"the host declares no residual stream ({type(self.host).__name__} "
                             f"has no esper_residual_stream())")
        if self.stream_frozen:
            raise ValueError(self.stream_frozen)
        blockers = self.stream_blockers()
        if blockers:
            raise ValueError(f"slots on the stream hold seeds sized to it: {blockers}")
        old_width = site.width
        replaced = site.widen(self.host, features, rng_seed_for("stream", self.global_step),
                              self.global_step, self.epoch)
        for slot in self._slot_list:  # dormant slots on the stream see the wider stream
            if _on(slot.node_id, site.names()) and slot.shape.channels == old_width:
                slot.shape.channels = site.width
        self._forget_parameters()
        for listener in self.stream_listeners:
            listener(replaced)
        return site.history[-1]["params"]

    # ---- reporting -----------------------------------------------------------------------
    def seed_states(self) -> list[SeedState]:
        return [slot.seed_state() for slot in self.esper_slots.values()]

    def live_seed_count(self) -> int:
        return sum(slot.is_live() for slot in self.esper_slots.values())

    def seed_param_count(self) -> int:
        return sum(slot.seed_param_count() for slot in self.esper_slots.values())

    def host_param_count(self) -> int:
        return sum(p.numel() for p in self.host.parameters())

    def declared_host_params(self) -> int:
        """The host's parameters with its residual stream at the width it declared: what the
        seeds' room is a share of (`KasminaConfig.max_seed_param_fraction`). A widened
        stream grows beside that room, up to its own limit, not into it (the session's
        budget says the same to the policy: esper.tolaria.budget)."""
        return self.host_param_count() - (self.stream.params_added if self.stream else 0)

    def model_graph(self) -> ModelGraph:
        from esper.kasmina.graph import build_model_graph

        return build_model_graph(self)

    # ---- unwrap ------------------------------------------------------------------------
    def unwrap(self) -> nn.Module:
        """A plain nn.Module (torch classes only) computing what this model computes with
        its fossilized seeds; culled and still-live seeds are left out (a warning names
        live ones). Merged fossils are already in the host weights; unmerged ones become
        traced residual modules at their host's place."""
        live = [s.slot_id for s in self.esper_slots.values() if s.is_live()]
        if live:
            warnings.warn(f"unwrap() leaves out seeds that are not fossilized: {live}",
                          stacklevel=2)
        with self._hooks_detached():
            plain = copy.deepcopy(self.host)
        fossils = [s for s in self.esper_slots.values()
                   if s.stage == SeedStage.SEED_STAGE_FOSSILIZED and s.seed is not None]
        # Widenings first: a residual fossil on the next layer then wraps the wider layer.
        for slot in [s for s in fossils if isinstance(s.seed, WidenSeed)]:
            seed = slot.seed
            wide_a, wide_b = merged_layers(plain.get_submodule(seed.producer_name),
                                           plain.get_submodule(seed.consumer_name), seed)
            _replace_submodule(plain, seed.producer_name, wide_a)
            _replace_submodule(plain, seed.consumer_name, wide_b)
        for slot in fossils:
            if not isinstance(slot.seed, WidenSeed):
                host_copy = plain.get_submodule(slot.node_id)
                fossil = residual_module(host_copy, copy.deepcopy(slot.seed))
                _replace_submodule(plain, slot.node_id, fossil)
        return plain

    @contextmanager
    def _hooks_detached(self):
        for slot in self.esper_slots.values():
            slot.remove_hook()
        try:
            yield
        finally:
            for slot in self.esper_slots.values():
                slot.install_hook()


def output_layers(model: nn.Module) -> set[str]:
    """Eligible modules whose output reaches the model's output through no other eligible
    module (the layers that compute the logits); empty when torch.fx cannot trace it."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # untraceable models keep every eligible slot
        return set()
    modules = dict(model.named_modules())

    def eligible(node: fx.Node) -> bool:
        return node.op == "call_module" and is_eligible(modules.get(node.target, nn.Identity()))

    heads = set()
    for node in graph.nodes:
        if not eligible(node):
            continue
        stack, seen = list(node.users), set()
        while stack:
            user = stack.pop()
            if user in seen or eligible(user):
                continue
            seen.add(user)
            if user.op == "output":
                heads.add(node.target)
                break
            stack.extend(user.users)
    return heads


def _on(node_id: str, names: tuple[str, ...]) -> bool:
    """Whether module `node_id` is one of `names` or inside one."""
    return any(node_id == n or node_id.startswith(n + ".") for n in names)


def _replace_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _strip_host_prefix(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + HOST_PREFIX)]:
        state_dict[prefix + key[len(prefix) + len(HOST_PREFIX):]] = state_dict.pop(key)
    return state_dict


def _add_host_prefix(state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    own = prefix + SLOTS_ATTR + "."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(own)]:
        state_dict[prefix + HOST_PREFIX + key[len(prefix):]] = state_dict.pop(key)


def _choose(model: nn.Module, slots: SlotChoice) -> list[str]:
    modules = dict(model.named_modules())
    banned = fused_descendants(model)
    if slots is None:
        # No growth on the output logits unless asked: a seed there rewrites the answer
        # itself rather than the features it is computed from.
        heads = output_layers(model)
        return [n for n, m in modules.items()
                if n and is_eligible(m) and n not in banned and n not in heads]
    if callable(slots):
        return [n for n, m in modules.items()
                if n and is_eligible(m) and n not in banned and slots(n, m)]
    names = list(slots)
    for name in names:
        if name not in modules or not name:
            raise ValueError(f"slot {name!r}: no such module in the model")
        if not is_eligible(modules[name]):
            raise ValueError(f"slot {name!r}: {type(modules[name]).__name__} cannot host a seed")
        if name in banned:
            raise ValueError(f"slot {name!r} is inside a fused block whose fast path bypasses "
                             "it; place the slot after the block instead")
    return names


def wrap(model: nn.Module, slots: SlotChoice = None, *, example_input: object = None,
         config: KasminaConfig | None = None) -> MorphableModel:
    """Wrap `model` with seed slots after the chosen modules: all eligible ones (None),
    the named ones (list of module names) or those a predicate(name, module) accepts.
    With `example_input` (a tensor or a tuple of positional args), one no-grad forward
    reads each slot's real activation shape; otherwise the shape comes from the type."""
    if isinstance(model, MorphableModel):
        raise TypeError("model is already wrapped")
    names = _choose(model, slots)
    if len({slot_key(n) for n in names}) != len(names):
        raise ValueError("two slot ids collide after replacing '.' with '__'")
    stacked = [n for n in names if lifecycle.STACK_SEPARATOR in n]
    if stacked:  # `fc1@2` names the second slot of fc1's stack
        raise ValueError(f"slot {stacked[0]!r}: module names with "
                         f"{lifecycle.STACK_SEPARATOR!r} cannot host slots")
    seen = observe_shapes(model, names, example_input) if example_input is not None else {}
    widenable = find_widen_sites(model, names, example_input)
    sites = []
    for name in names:
        module = model.get_submodule(name)
        device, dtype = module_device_dtype(module, model)
        shape = seen.get(name) or _unobserved_shape(module)
        widen = widenable.get(name)
        if widen is not None:
            shape.widen_params_per_unit = widen.params_per_unit
        sites.append(SlotSite(node_id=name, module=module, shape=shape, device=device, dtype=dtype,
                              widen=widen))
    decl = declared(model)
    stream = StreamSite(model, decl, _example_rows(example_input)) if decl is not None else None
    return MorphableModel(model, sites, config or KasminaConfig(), stream)


def _example_rows(example_input: object) -> object:
    """The example's first two rows (all a widening's output check needs), detached."""
    if example_input is None:
        return None
    if isinstance(example_input, tuple):
        return tuple(a[:2].detach() if hasattr(a, "detach") else a for a in example_input)
    return example_input[:2].detach()


def _unobserved_shape(module: nn.Module) -> SlotShape:
    """A slot's shape from its module's type alone (no example input to observe): a
    sequence slot is taken as causal, the safe side (observe_shapes)."""
    kind = default_kind(module)
    return SlotShape(kind=kind, channels=channels_of(module),
                     causal=kind == SlotKind.SLOT_KIND_SEQUENCE)


__all__ = ["MorphableModel", "wrap", "slot_key", "lifecycle"]
