"""Per-layer health (Leyline LayerHealth) measured from the real tensors.

Forward hooks add each activation's statistics into small accumulators, and
`after_backward()` folds the layer's gradient norm in the same way. `step()` returns
LayerHealth protos every `every` steps, then starts a new window. Only training-mode
forwards are observed (validation passes are not training health), and with
`sample_every = k` only one training step in k, the last of each k (with
`activation_every = m`, the activations of one in m), so the counts (NaN/Inf included) are those of the sampled steps.
The hooks are installed only for the steps whose activations are sampled: between them the
monitored modules run with no hook at all.

On an accelerator the accumulators are tensors on the activation's device, so nothing
leaves the device during a step (the read at the end of a window is the only sync). On the
CPU there is no device to stay on and a small step is dominated by the per-call overhead
of tensor operations, so the statistics of a finite float32/float64 activation (almost all
of them) are read into Python floats by a few NumPy reductions over a view of its memory
(min/max, sum, sum of squares, non-zeros), as are the gradient and weight norms; an
activation with NaN or Inf takes the masked path. Both add the same float64 values, to
float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from esper.kasmina.shapes import primary_output
from esper.leyline.v1.signals_pb2 import LayerHealth

# |activation| above this counts as saturated: beyond +-6 a sigmoid's slope is < 0.003
# and tanh/GELU tails are flat, so units there pass almost no gradient.
SATURATION_THRESHOLD = 6.0
DEFAULT_EVERY = 50
# Observe 1 training step in this many (1 = every step). Statistics of a window are means
# over many steps of whole-batch reductions, so sampling barely changes them, while the
# per-step cost of the reductions is what a small model notices (see Tolaria's default).
DEFAULT_SAMPLE_EVERY = 1
# Activation accumulator layout.
_N, _SUM, _SUMSQ, _ZERO, _SAT, _NAN, _INF = range(7)
# Gradient accumulator layout: sum of norms, sum of squared norms, steps with grads.
_GSUM, _GSQ, _GN = range(3)
# CPU dtypes read through NumPy views (others, e.g. bfloat16, take torch's reductions).
_NUMPY_DTYPES = (torch.float32, torch.float64)
# A float32 sum of squares below this cannot overflow (float32's largest value is ~3.4e38).
_NO_OVERFLOW = 1e38
# A CPU parameter larger than this has its update ratio measured on a fixed random sample
# of this many of its elements. Reading every weight at each window's end streams the whole
# layer through the cache and evicts what the next training steps need: on a 1.8 ms MLP
# step that cost more than the reads themselves. The sample's ||dW|| / ||W|| estimates the
# parameter's to within a few percent (its relative error is ~1/sqrt(UPDATE_SAMPLE) times
# the spread of the squared entries), plenty for a health signal read as an order of
# magnitude.
UPDATE_SAMPLE = 4096


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class _LayerStats:
    def __init__(self, name: str, module: nn.Module, device: torch.device) -> None:
        self.name = name
        self.module = module
        dtype = _acc_dtype(device)
        # Device accumulators (accelerators, and CPU activations with NaN/Inf) ...
        self.act = torch.zeros(7, dtype=dtype, device=device)
        self.grad = torch.zeros(3, dtype=dtype, device=device)
        self.on_device = False  # whether act/grad hold anything this window
        # ... and host accumulators (CPU tensors: Python floats, i.e. float64 adds).
        self.act_host = [0.0] * 7
        self.grad_host = [0.0] * 3
        self.params = [p for p in module.parameters() if p.requires_grad]
        # The window's start weights (or, for a large CPU parameter, the sampled elements
        # of it: `sample` holds their indices in memory order) and their squared norms.
        self.sample = [_update_sample(p) for p in self.params]
        self.prev = [p.detach().clone() if idx is None else _take(p, idx)
                     for p, idx in zip(self.params, self.sample)]
        self.prev_sq = [sq * _scale(p, idx) for p, idx, sq in
                        zip(self.params, self.sample, squared_norms(self.prev))]


class HealthMonitor:
    """Collect LayerHealth for named modules (e.g. every slot's host module)."""

    def __init__(self, layers: dict[str, nn.Module], *, every: int = DEFAULT_EVERY,
                 saturation: float = SATURATION_THRESHOLD,
                 sample_every: int = DEFAULT_SAMPLE_EVERY,
                 activation_every: int | None = None) -> None:
        """`sample_every`: gradient norms are folded in on 1 training step in this many;
        `activation_every` (default: `sample_every`): activation statistics are taken on
        1 in this many (their hooks are installed for those steps only)."""
        activation_every = sample_every if activation_every is None else activation_every
        if every <= 0:
            raise ValueError("every must be > 0")
        if sample_every <= 0:
            raise ValueError("sample_every must be > 0")
        if activation_every <= 0:
            raise ValueError("activation_every must be > 0")
        self.every = every
        self.saturation = saturation
        self.sample_every = sample_every
        self.activation_every = activation_every
        self.steps = 0
        self._closed = False
        self._layers = [_LayerStats(n, m, _device_of(m)) for n, m in layers.items()]
        # Each layer's hook, built once: installed and removed around every sampled step.
        self._hooks = [self._hook(s) for s in self._layers]
        self._handles: list = []
        # Whether the current step's gradient norms are observed, and its activations
        # (the hooks are installed); eval-mode forwards (validation) never are.
        # The last step of each sampling period is sampled (with the default periods, the
        # snapshot step, whose gradients are read for the global norm anyway).
        self._sampling = False
        self._hooked = False
        self._set_sampling(sample_every == 1, activation_every == 1)

    @classmethod
    def for_slots(cls, model, **kwargs) -> HealthMonitor:
        """Monitor the host module of every slot of a MorphableModel, keyed by slot id."""
        return cls({s.slot_id: s.host_module for s in model.slots.values()}, **kwargs)

    def _set_sampling(self, sampling: bool, activations: bool) -> None:
        """Whether the next step's gradient norms are observed; install the hooks for a
        step whose activations are, remove them after it."""
        self._sampling = sampling
        if activations == self._hooked:
            return
        self._hooked = activations
        if activations and not self._closed:
            # First among each module's hooks: health is the host module's own output,
            # before a seed's hook adds to it (seed hooks come and go with the seed's stage).
            self._handles = [s.module.register_forward_hook(hook, prepend=True)
                             for s, hook in zip(self._layers, self._hooks)]
        elif not activations:
            for h in self._handles:
                h.remove()
            self._handles = []

    def _hook(self, stats: _LayerStats):
        def hook(module, args, output):
            if module.training:
                self._observe(stats, primary_output(output))

        return hook

    def _observe(self, stats: _LayerStats, x: torch.Tensor) -> None:
        x = x.detach()
        if x.is_cpu and x.is_floating_point() and x.numel() and self._observe_host(stats, x):
            return
        xf = x.to(stats.act.dtype)
        finite = torch.isfinite(xf)
        xz = torch.where(finite, xf, torch.zeros((), dtype=xf.dtype, device=xf.device))
        stats.act.add_(torch.stack([
            finite.sum(), xz.sum(), (xz * xz).sum(), (x == 0).sum(),
            (xz.abs() > self.saturation).sum(), torch.isnan(x).sum(), torch.isinf(x).sum(),
        ]).to(stats.act.dtype))
        stats.on_device = True

    def _observe_host(self, stats: _LayerStats, x: torch.Tensor) -> bool:
        """The statistics of a finite CPU activation into the host accumulators; False
        (nothing added) when it holds NaN or Inf (its min or max is then not finite).

        Each torch call costs more than its arithmetic here (~10 us of overhead in a
        training loop), so this is five NumPy reductions of a view of the activation's
        memory (no copy, ~2x cheaper than the same torch calls): the extremes, the sum (in
        float64), the sum of squares (float32 dot, a relative error ~1e-7, far below what
        a window's mean and spread need) and the exact count of non-zeros. Saturation is
        counted only when the extremes say some value is beyond the threshold, and the
        sum of squares silences overflow warnings (an errstate costs ~9 us, more than
        the dot) only when the extremes say it could overflow."""
        if x.dtype not in _NUMPY_DTYPES:
            x = x.float()  # half precision: exact in float32
        a = x.numpy()
        lo, hi = float(a.min()), float(a.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return False
        flat = a.ravel(order="K")  # a view in memory order (e.g. channels-last)
        acc = stats.act_host
        acc[_N] += flat.size
        acc[_SUM] += float(flat.sum(dtype=np.float64))
        extreme = max(-lo, hi)
        if extreme * extreme * flat.size < _NO_OVERFLOW:
            acc[_SUMSQ] += float(np.dot(flat, flat))
        else:
            with np.errstate(over="ignore"):  # |x| > 1e19 squares to inf, as torch's would
                acc[_SUMSQ] += float(np.dot(flat, flat))
        # count_nonzero(flat) is one pass; (flat == 0) would first build a mask.
        acc[_ZERO] += flat.size - int(np.count_nonzero(flat))
        if extreme > self.saturation:
            acc[_SAT] += int(np.count_nonzero(np.abs(flat) > self.saturation))
        return True

    def after_backward(self, squares: dict[int, float] | None = None) -> None:
        """Fold this step's gradient norms in (call after backward, before zero_grad).
        `squares`: the squared norms of gradients already read this step, by id of their
        parameter (grad_squares), so they are not read again."""
        if not self._sampling:
            return
        host: list[tuple[_LayerStats, int]] = []
        host_params: list[nn.Parameter] = []
        for stats in self._layers:
            params = [p for p in stats.params if p.grad is not None]
            if not params:
                continue
            if params[0].grad.is_cpu:
                host.append((stats, len(params)))
                host_params.extend(params)
                continue
            grads = [p.grad for p in params]
            norm = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm(grads)).to(stats.grad.dtype))
            stats.grad.add_(torch.stack([norm, norm * norm, torch.ones_like(norm)]))
            stats.on_device = True
        if not host:
            return
        # CPU layers: every parameter's squared norm read at once (those not given); the
        # layer norm is the float64 norm of its parameters' norms.
        known = squares or {}
        if all(id(p) in known for p in host_params):
            values = [known[id(p)] for p in host_params]
        else:
            values = squared_norms([p.grad for p in host_params])
        start = 0
        for stats, count in host:
            norm = math.sqrt(math.fsum(values[start:start + count]))
            start += count
            acc = stats.grad_host
            acc[_GSUM] += norm
            acc[_GSQ] += norm * norm
            acc[_GN] += 1.0

    def step(self) -> list[LayerHealth] | None:
        """Count a step; every `every` steps return the window's LayerHealth list."""
        steps = self.steps = self.steps + 1
        sample = (steps + 1) % self.sample_every == 0  # whether the next step is sampled
        activations = (steps + 1) % self.activation_every == 0
        if sample != self._sampling or activations != self._hooked:  # this runs every step
            self._set_sampling(sample, activations)
        return self.read() if steps % self.every == 0 else None

    def read(self) -> list[LayerHealth]:
        """LayerHealth of the current window (one sync), then reset the window."""
        window = self.steps % self.every or self.every
        ratios = self._update_ratios(window)
        return [self._health(s, window, r) for s, r in zip(self._layers, ratios)]

    def _health(self, stats: _LayerStats, window: int, update_ratio: float) -> LayerHealth:
        act, grad = stats.act_host, stats.grad_host
        if stats.on_device:
            act = [a + b for a, b in zip(act, stats.act.tolist())]
            grad = [a + b for a, b in zip(grad, stats.grad.tolist())]
            stats.act.zero_()
            stats.grad.zero_()
            stats.on_device = False
        n, total, sq, zero, sat, nan, inf = act
        gsum, gsq, gcount = grad
        mean = total / n if n else 0.0
        var = max(sq / n - mean * mean, 0.0) if n else 0.0
        gmean = gsum / gcount if gcount else 0.0
        gvar = max(gsq / gcount - gmean * gmean, 0.0) if gcount else 0.0
        numel = n + nan + inf
        health = LayerHealth(
            layer_id=stats.name, activation_mean=mean, activation_std=math.sqrt(var),
            dead_fraction=zero / numel if numel else 0.0,
            saturated_fraction=sat / numel if numel else 0.0,
            gradient_norm=gmean, gradient_variance=gvar,
            update_ratio=update_ratio, nan_count=int(nan),
            inf_count=int(inf), window_steps=window,
        )
        stats.act_host = [0.0] * 7
        stats.grad_host = [0.0] * 3
        return health

    def _update_ratios(self, window: int) -> list[float]:
        """Each layer's mean per-step ||dW|| / ||W|| over the window (from the window's
        start weights); the start weights then become the current ones, in place."""
        out = []
        for stats in self._layers:
            if not stats.params:
                out.append(0.0)
                continue
            deltas, now_sq = _restart(stats.prev, [p.detach() for p in stats.params],
                                      stats.sample)
            delta = math.sqrt(math.fsum(deltas))
            base = math.sqrt(math.fsum(stats.prev_sq))
            stats.prev_sq = now_sq
            out.append(delta / max(base, 1e-12) / max(window, 1))
        return out

    def close(self) -> None:
        self._closed = True
        for h in self._handles:
            h.remove()
        self._handles.clear()


def grad_squares(params) -> dict[int, float]:
    """The squared norm of each parameter's gradient (those that have one), by id of the
    parameter, all read at once (squared_norms)."""
    params = [p for p in params if p.grad is not None]
    return dict(zip(map(id, params), squared_norms([p.grad for p in params])))


def squared_norms(tensors: list[torch.Tensor]) -> list[float]:
    """Each tensor's squared L2 norm as a Python float, all read at once (one sync per
    device). CPU float32/float64 tensors are reduced by NumPy's dot over a view of their
    memory, at a fraction of a torch call's overhead; the others by torch."""
    out = [0.0] * len(tensors)
    rest = []
    with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN in: inf/NaN out, silently
        for i, t in enumerate(tensors):
            if t.is_cpu and t.dtype in _NUMPY_DTYPES:
                flat = t.detach().numpy().ravel(order="K")
                out[i] = float(np.dot(flat, flat))
            else:
                rest.append(i)
    if rest:
        norms = torch._foreach_norm([tensors[i] for i in rest])
        try:
            values = torch.stack(norms).tolist()
        except RuntimeError:  # tensors on several devices
            values = [n.item() for n in norms]
        for i, v in zip(rest, values):
            out[i] = v * v
    return out


def _update_sample(p: torch.Tensor) -> np.ndarray | None:
    """The sorted memory-order indices of the elements whose updates stand for a large CPU
    parameter's (UPDATE_SAMPLE), drawn from a generator seeded by its size, so a run is
    reproducible; None: every element is read."""
    if not (p.is_cpu and p.dtype in _NUMPY_DTYPES and p.numel() > UPDATE_SAMPLE):
        return None
    rng = np.random.default_rng(p.numel())
    return np.sort(rng.choice(p.numel(), UPDATE_SAMPLE, replace=False))


def _take(p: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """The sampled elements of a CPU parameter, as a new tensor."""
    return torch.from_numpy(np.take(p.detach().numpy().ravel(order="K"), idx))


def _scale(p: torch.Tensor, idx: np.ndarray | None) -> float:
    """What a sample's squared norm is multiplied by to stand for the whole parameter's."""
    return 1.0 if idx is None else p.numel() / len(idx)


def _restart(prev: list[torch.Tensor], now: list[torch.Tensor],
             samples: list[np.ndarray | None]) -> tuple[list[float], list[float]]:
    """Squared norms of now - prev and of now, then prev := now (for a sampled parameter,
    of its sampled elements, scaled to its size). CPU float32/float64 tensors go one at a
    time through NumPy views (subtract, dot, copy, dot: the last three on data the first
    left in cache), the others through torch's foreach calls."""
    deltas, now_sq = [0.0] * len(prev), [0.0] * len(prev)
    rest = []
    with np.errstate(over="ignore", invalid="ignore"):
        for i, (p, n, idx) in enumerate(zip(prev, now, samples)):
            if not (p.is_cpu and n.is_cpu and p.dtype == n.dtype and p.dtype in _NUMPY_DTYPES):
                rest.append(i)
                continue
            a, b = p.numpy(), n.numpy()
            scale = 1.0
            if idx is not None:
                b, scale = np.take(b.ravel(order="K"), idx), _scale(n, idx)
            np.subtract(a, b, out=a)  # -dW
            flat = a.ravel(order="K")
            deltas[i] = float(np.dot(flat, flat)) * scale
            np.copyto(a, b)
            now_sq[i] = float(np.dot(flat, flat)) * scale
    if rest:
        p, n = [prev[i] for i in rest], [now[i] for i in rest]
        with torch.no_grad():
            torch._foreach_sub_(p, n)
            d = squared_norms(p)
            torch._foreach_copy_(p, n)
        for i, dv, nv in zip(rest, d, squared_norms(p)):
            deltas[i], now_sq[i] = dv, nv
    return deltas, now_sq


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
