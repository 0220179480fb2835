"""Width growth: a seed that widens its slot's host layer in place (OP_TYPE_WIDEN).

A Linear or Conv2d host layer A whose output reaches the next Linear/Conv2d B only through
channel-wise ops (activations, pooling, flatten, dropout modules) can gain `k` output units
without changing what the model computes: A gets k new rows, B k new input columns that
start at zero. Kasmina keeps that as a seed while it is live, so the lifecycle (isolated
training, blending, gates, cull) applies unchanged:

    grow    = a fresh layer of A's type and geometry with k outputs   (A's new rows)
    path    = the channel-wise ops between A and B, replayed           (same functions)
    project = a layer of B's type and geometry reading the new units  (B's new columns, 0)
    B's output += alpha * project(path(grow(A's input)))

The seed reads A's *input* (captured by a hook on A) and adds to B's *output*; on
`unwrap()` a fossilized width seed becomes what it stands for: a wider A and a wider B.

Sites are found by tracing the host with torch.fx and checked numerically (the path
applied to [old; new] channels equals [path(old); path(new)]), so a path that mixes
channels (a norm, a softmax, a reshape across channels) is never taken for a widening.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

# Layers whose width can grow (groups=1 convs only: grouped convs tie channels together).
WIDENABLE = (nn.Linear, nn.Conv2d)
# Modules and functions that act on each channel alone (the separability probe checks it).
CHANNELWISE_MODULES = (
    nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Dropout,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
    nn.Identity,
)
CHANNELWISE_FUNCTIONS = frozenset({
    F.relu, torch.relu, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.leaky_relu, F.elu,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.flatten,
})
CHANNELWISE_METHODS = frozenset({"relu", "flatten", "sigmoid", "tanh"})
# Tolerance of the separability probe (float64).
PROBE_ATOL = 1e-9


@dataclass
class PathOp:
    """One channel-wise op between A and B: fn(x, *args, **kwargs)."""

    fn: Callable
    args: tuple = ()
    kwargs: dict | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.args, **(self.kwargs or {}))


@dataclass
class WidenSite:
    """A widenable host layer: its consumer, the path between them, and sizes."""

    producer: str
    consumer: str
    path: list[PathOp]
    # Consumer inputs per new producer unit (>1 when the path flattens space into features).
    expansion: int
    params_per_unit: int
    tap_shape: tuple[int, ...]  # the producer's input, without the batch dim


def find_widen_sites(model: nn.Module, names: list[str], example_input: object) -> dict[str, WidenSite]:
    """The widenable slots among `names` (empty when the model cannot be traced or no
    example input is given: a path must be probed to be trusted)."""
    if example_input is None:
        return {}
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # control flow etc.: no width growth for this model, everything else works
        return {}
    wanted = set(names)
    candidates = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in wanted:
            found = _walk(model, node)
            if found is not None:
                candidates[node.target] = found
    if not candidates:
        return {}
    taps = _observe_io(model, candidates, example_input)
    sites = {}
    for name, (consumer, path) in candidates.items():
        site = _checked_site(model, name, consumer, path, taps.get(name))
        if site is not None:
            sites[name] = site
    return sites


def _walk(model: nn.Module, node: fx.Node) -> tuple[str, list[PathOp]] | None:
    """Follow A's single-use chain of channel-wise ops to the next widenable layer."""
    if not _widenable(model.get_submodule(node.target)):
        return None
    path: list[PathOp] = []
    current = node
    while True:
        users = list(current.users)
        if len(users) != 1:
            return None
        user = users[0]
        if not user.args or user.args[0] is not current or _node_args(user.args[1:], user.kwargs):
            return None
        if user.op == "call_module":
            module = model.get_submodule(user.target)
            if _widenable(module):
                return (user.target, path) if len(user.args) == 1 and not user.kwargs else None
            if not isinstance(module, CHANNELWISE_MODULES):
                return None
            path.append(PathOp(module))
        elif user.op == "call_function" and user.target in CHANNELWISE_FUNCTIONS:
            path.append(PathOp(user.target, tuple(user.args[1:]), dict(user.kwargs)))
        elif user.op == "call_method" and user.target in CHANNELWISE_METHODS:
            method = user.target
            path.append(PathOp(lambda x, *a, _m=method, **k: getattr(x, _m)(*a, **k),
                               tuple(user.args[1:]), dict(user.kwargs)))
        else:
            return None
        current = user


def _widenable(module: nn.Module) -> bool:
    return isinstance(module, WIDENABLE) and getattr(module, "groups", 1) == 1


def _node_args(args, kwargs) -> bool:
    """Whether any other argument is a graph value (the op would mix tensors)."""
    return any(isinstance(a, fx.Node) for a in (*args, *kwargs.values()))


def _observe_io(model: nn.Module, candidates: dict, example_input: object) -> dict[str, torch.Tensor]:
    """Each producer's input on the example (one no-grad forward)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in candidates:
        def record(mod, args, out, name=name):
            seen.setdefault(name, args[0].detach())
        handles.append(model.get_submodule(name).register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _checked_site(model, name: str, consumer: str, path: list[PathOp],
                  tap: torch.Tensor | None) -> WidenSite | None:
    if tap is None:
        return None
    producer, reader = model.get_submodule(name), model.get_submodule(consumer)
    with torch.no_grad():
        old = producer(tap[:2])
        if not _separable(path, old):
            return None
        one = run_path(path, torch.zeros_like(old[:, :1]))
    expansion = one.shape[1]
    if isinstance(reader, nn.Linear) and one.dim() != 2:
        return None
    if isinstance(reader, nn.Conv2d) and (one.dim() != 4 or expansion != 1):
        return None
    return WidenSite(producer=name, consumer=consumer, path=path, expansion=expansion,
                     params_per_unit=_incoming(producer) + expansion * _outgoing(reader),
                     tap_shape=tuple(tap.shape[1:]))


def run_path(path: list[PathOp], x: torch.Tensor) -> torch.Tensor:
    for op in path:
        x = op(x)
    return x


def _separable(path: list[PathOp], old: torch.Tensor) -> bool:
    """path([old; new]) == [path(old); path(new)] on random values (eval mode)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(old.shape, generator=gen, dtype=torch.float64)
    b = torch.randn((old.shape[0], 3, *old.shape[2:]), generator=gen, dtype=torch.float64)
    try:
        joint = run_path(path, torch.cat([a, b], 1))
        apart = torch.cat([run_path(path, a), run_path(path, b)], 1)
    except Exception:
        return False
    return joint.shape == apart.shape and bool((joint - apart).abs().max() <= PROBE_ATOL)


def _incoming(layer: nn.Module) -> int:
    """Parameters of one more output unit of `layer` (its row/filter and bias)."""
    per = layer.weight[0].numel()
    return per + (1 if layer.bias is not None else 0)


def _outgoing(layer: nn.Module) -> int:
    """Parameters of one more input of `layer` (its column / input channel filters)."""
    return layer.weight[:, 0].numel()


class WidenSeed(nn.Module):
    """The live form of a widening by `units`: grow -> path -> project (see module doc).
    `tap` holds A's input of the current forward (set by the slot's capture hook)."""

    def __init__(self, site: WidenSite, producer: nn.Module, consumer: nn.Module,
                 units: int, blueprint_ref: str = "") -> None:
        super().__init__()
        self.blueprint_ref = blueprint_ref
        self.units = units
        self.producer_name, self.consumer_name = site.producer, site.consumer
        self.grow = _like(producer, out_units=units)
        self.project = _like(consumer, in_units=units * site.expansion, bias=False)
        with torch.no_grad():
            self.project.weight.zero_()  # function-preserving: the new units start unheard
        self.__dict__["path"] = site.path  # host ops, not submodules (no state of their own)
        self.__dict__["tap_shape"] = site.tap_shape
        self.tap: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(run_path(self.path, self.grow(x)))

    def take_tap(self) -> torch.Tensor:
        """A's input of this forward, released from the seed (autograd keeps what it needs)."""
        tap, self.tap = self.tap, None
        if tap is None:
            raise RuntimeError(f"width seed: {self.producer_name} did not run before "
                               f"{self.consumer_name} in this forward")
        return tap

    def probe_input(self, batch: int, generator: torch.Generator, device, dtype) -> torch.Tensor:
        return torch.randn((batch, *self.tap_shape), generator=generator, device=device).to(dtype)

    def extra_repr(self) -> str:
        return f"widens {self.producer_name} by {self.units} (read by {self.consumer_name})"


def _like(layer: nn.Module, *, out_units: int | None = None, in_units: int | None = None,
          bias: bool | None = None) -> nn.Module:
    """A fresh layer of `layer`'s type and geometry with other widths."""
    has_bias = layer.bias is not None if bias is None else bias
    p = layer.weight
    if isinstance(layer, nn.Linear):
        new = nn.Linear(in_units or layer.in_features, out_units or layer.out_features, bias=has_bias)
    else:
        new = nn.Conv2d(in_units or layer.in_channels, out_units or layer.out_channels,
                        layer.kernel_size, stride=layer.stride, padding=layer.padding,
                        dilation=layer.dilation, bias=has_bias, padding_mode=layer.padding_mode)
    return new.to(device=p.device, dtype=p.dtype)


def materialise(request: nn.Module, site: WidenSite | None, host: nn.Module, *,
                blueprint_ref: str, rng_seed: int) -> WidenSeed:
    """The WidenSeed for a built OP_TYPE_WIDEN kernel at `site`. Its fresh rows come from a
    private generator seeded with `rng_seed` (the training RNG is never consumed, and every
    replica of a distributed run builds the same seed)."""
    if site is None:
        raise ValueError("this slot's layer cannot be widened in place")
    units = _units_of(request)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng_seed)
        return WidenSeed(site, host.get_submodule(site.producer), host.get_submodule(site.consumer),
                         units, blueprint_ref)


def widen_request(seed: nn.Module) -> bool:
    """Whether a built seed is an OP_TYPE_WIDEN request (still to be materialised)."""
    from esper.blueprints.ops import WidenRequest

    ops = getattr(seed, "ops", None)
    return ops is not None and len(ops) == 1 and isinstance(next(iter(ops.values())), WidenRequest)


def _units_of(request: nn.Module) -> int:
    return int(next(iter(request.ops.values())).units)


def rng_seed_for(slot_id: str, step: int) -> int:
    """A deterministic generator seed for a germination (same on every rank)."""
    return zlib.crc32(f"{slot_id}@{step}".encode()) & 0x7FFF_FFFF


def merged_layers(producer: nn.Module, consumer: nn.Module, seed: WidenSeed) -> tuple[nn.Module, nn.Module]:
    """The wider A and B that compute exactly what A, B and the fossilized seed compute."""
    wide_a = _like(producer, out_units=producer.weight.shape[0] + seed.units)
    extra_in = seed.project.weight.shape[1]
    wide_b = _like(consumer, in_units=consumer.weight.shape[1] + extra_in)
    grown = seed.grow.weight.detach()
    if grown.shape[1] < producer.weight.shape[1]:
        # A was itself widened at its input by an earlier widening the seed never read:
        # the new units take nothing from those inputs, as in the live model.
        pad = list(grown.shape)
        pad[1] = producer.weight.shape[1] - grown.shape[1]
        grown = torch.cat([grown, grown.new_zeros(pad)], 1)
    heard = seed.project.weight.detach()
    if heard.shape[0] < consumer.weight.shape[0]:
        # B was widened at its output by its own widening: those units never read A's new ones.
        pad = list(heard.shape)
        pad[0] = consumer.weight.shape[0] - heard.shape[0]
        heard = torch.cat([heard, heard.new_zeros(pad)], 0)
    with torch.no_grad():
        wide_a.weight.copy_(torch.cat([producer.weight, grown], 0))
        if producer.bias is not None:
            wide_a.bias.copy_(torch.cat([producer.bias, seed.grow.bias], 0))
        wide_b.weight.copy_(torch.cat([consumer.weight, heard], 1))
        if consumer.bias is not None:
            wide_b.bias.copy_(consumer.bias)
    return wide_a, wide_b


def widened_copy(host: nn.Module, producer: str, consumer: str, units: int) -> nn.Module:
    """A deep copy of `host` whose `producer` layer has `units` more outputs and `consumer`
    as many more inputs per unit as the path gives, freshly initialised (the architecture a
    widening ends in, e.g. to train it static from the start)."""
    plain = copy.deepcopy(host)
    a, b = plain.get_submodule(producer), plain.get_submodule(consumer)
    per_unit_inputs = b.weight.shape[1] // a.weight.shape[0]
    _set(plain, producer, _like(a, out_units=a.weight.shape[0] + units))
    _set(plain, consumer, _like(b, in_units=b.weight.shape[1] + units * per_unit_inputs))
    return plain


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


class WidenStandIn(nn.Module):
    """A width kernel exercised without its host, for whoever validates and measures
    kernels (Tezzeret): the widening materialised against a stand-in pair of the slot's kind
    at its width C (Linear C->C, ReLU, Linear C->C; or the same with 3x3 convolutions), as
    a module from the slot's activation to the next layer's output (the same shape). The
    real host's layers are checked again by Kasmina's gates at germination."""

    def __init__(self, request: nn.Module, channels: int, conv: bool) -> None:
        super().__init__()
        if conv:
            producer = nn.Conv2d(channels, channels, 3, padding=1)
            consumer = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            producer, consumer = nn.Linear(channels, channels), nn.Linear(channels, channels)
        site = WidenSite(producer="producer", consumer="consumer", path=[PathOp(torch.relu)],
                         expansion=1, params_per_unit=_incoming(producer) + _outgoing(consumer),
                         tap_shape=(channels,))
        self.seed = WidenSeed(site, producer, consumer, _units_of(request))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seed(x)
