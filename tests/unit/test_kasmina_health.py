"""Health values against hand-computed statistics of the same tensors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from esper.kasmina import HealthMonitor, wrap
from esper.kasmina.health import grad_squares, squared_norms


def test_layer_health_matches_hand_computed_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    wrapped = wrap(model, ["0"])
    monitor = HealthMonitor.for_slots(wrapped, every=2, saturation=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xs = [torch.randn(3, 4), torch.randn(3, 4)]
    acts, norms = [], []
    w0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    out = None
    for x in xs:
        acts.append(model[0](x).detach())
        wrapped(x).sum().backward()
        monitor.after_backward()
        norms.append(torch.cat([model[0].weight.grad.flatten(), model[0].bias.grad]).norm())
        opt.step()
        opt.zero_grad()
        out = monitor.step()
    assert out is not None and len(out) == 1
    h = out[0]
    a = torch.cat(acts).double()
    assert h.layer_id == "0" and h.window_steps == 2
    assert h.activation_mean == pytest.approx(a.mean().item(), rel=1e-6)
    assert h.activation_std == pytest.approx(a.std(unbiased=False).item(), rel=1e-5)
    assert h.saturated_fraction == pytest.approx((a.abs() > 1.0).double().mean().item())
    assert h.dead_fraction == 0.0 and h.nan_count == 0 and h.inf_count == 0
    n = torch.stack(norms).double()
    assert h.gradient_norm == pytest.approx(n.mean().item(), rel=1e-5)
    assert h.gradient_variance == pytest.approx(n.var(unbiased=False).item(), rel=1e-3, abs=1e-9)
    w1 = model[0].weight.detach(), model[0].bias.detach()
    delta = torch.cat([(w1[0] - w0[0]).flatten(), w1[1] - w0[1]]).norm()
    base = torch.cat([w0[0].flatten(), w0[1]]).norm()
    assert h.update_ratio == pytest.approx((delta / base).item() / 2, rel=1e-5)
    monitor.close()


def test_dead_and_non_finite_counts():
    relu = nn.ReLU()
    monitor = HealthMonitor({"relu": relu}, every=1)
    relu(torch.tensor([[-1.0, 0.0, 2.0, float("nan"), float("inf"), -float("inf")]]))
    h = monitor.step()[0]
    assert h.nan_count == 1 and h.inf_count == 1  # ReLU maps -inf to 0
    assert h.dead_fraction == pytest.approx(3 / 6)
    assert math.isfinite(h.activation_mean) and h.activation_mean == pytest.approx(2 / 4)


def test_sampling_observes_one_training_step_in_k_and_never_eval():
    relu = nn.ReLU()
    monitor = HealthMonitor({"relu": relu}, every=4, sample_every=2)
    batches = [torch.full((1, 4), float(v)) for v in (1.0, 10.0, 3.0, 20.0)]
    for i, x in enumerate(batches):
        relu(x)
        relu.eval()
        relu(torch.full((1, 4), -100.0))  # a validation forward: never observed
        relu.train()
        out = monitor.step()
    h = out[0]
    # The last step of each pair was sampled (values 10 and 20); steps 0 and 2 and every
    # eval pass were not.
    assert h.activation_mean == pytest.approx(15.0)
    assert h.dead_fraction == 0.0
    monitor.close()
    with pytest.raises(ValueError):
        HealthMonitor({"relu": relu}, sample_every=0)


def test_activations_sampled_apart_from_gradient_norms():
    # Gradient norms every step, activations the last step of each two (their hooks only
    # then).
    layer = nn.Linear(1, 1, bias=False)
    nn.init.ones_(layer.weight)
    monitor = HealthMonitor({"layer": layer}, every=4, sample_every=1, activation_every=2)
    hooked = []
    for v in (1.0, 10.0, 3.0, 20.0):
        hooked.append(bool(layer._forward_hooks))
        layer(torch.full((1, 1), v)).sum().backward()  # output v, weight gradient v
        monitor.after_backward()
        layer.zero_grad()
        out = monitor.step()
    h = out[0]
    assert hooked == [False, True, False, True]
    assert h.activation_mean == pytest.approx(15.0)  # steps 1 and 3: values 10 and 20
    assert h.gradient_norm == pytest.approx((1 + 10 + 3 + 20) / 4)
    monitor.close()
    with pytest.raises(ValueError):
        HealthMonitor({"layer": layer}, activation_every=0)


def _ratio_since(start: list[torch.Tensor], layer: nn.Module) -> float:
    """The exact ||dW|| / ||W|| of `layer`'s parameters since `start` (float64)."""
    now = [p.detach().double() for p in layer.parameters()]
    delta = math.sqrt(sum((n - s).square().sum().item() for n, s in zip(now, start)))
    return delta / math.sqrt(sum(s.square().sum().item() for s in start))


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float32, 1e-5), (torch.float64, 1e-9),
                                            (torch.bfloat16, 2e-2)])
def test_update_ratios_of_consecutive_windows(dtype, rel):
    # Each window's ratio is measured from the weights at the end of the one before (the
    # NumPy path for float32/float64, torch's for bfloat16).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).to(dtype)
    wrapped = wrap(model, ["0"])
    monitor = HealthMonitor.for_slots(wrapped, every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        start = [p.detach().double().clone() for p in model[0].parameters()]
        wrapped(torch.randn(3, 4, dtype=dtype)).sum().backward()
        grad = math.sqrt(sum(p.grad.double().square().sum().item() for p in model[0].parameters()))
        monitor.after_backward()
        opt.step()
        opt.zero_grad()
        h = monitor.step()[0]
        assert h.update_ratio == pytest.approx(_ratio_since(start, model[0]), rel=rel)
        assert h.gradient_norm == pytest.approx(grad, rel=rel)
    monitor.close()


def test_given_gradient_squares_are_not_read_again():
    # The snapshot step's global norm reads every gradient once (grad_squares); layer
    # health takes its layers' squared norms from there.
    layer = nn.Linear(3, 2)
    monitor = HealthMonitor({"layer": layer}, every=1)
    layer(torch.ones(1, 3)).sum().backward()
    squares = grad_squares(layer.parameters())
    assert squares == {id(p): pytest.approx(p.grad.double().square().sum().item())
                       for p in layer.parameters()}
    squares = {key: 4.0 for key in squares}  # so the norm shows where it came from
    monitor.after_backward(squares)
    assert monitor.step()[0].gradient_norm == pytest.approx(math.sqrt(8.0))
    monitor.close()


def test_squared_norms_match_torch_on_every_path():
    tensors = [torch.randn(300, 7), torch.randn(5, dtype=torch.float64), torch.randn(4, 3).t(),
               torch.randn(6).to(torch.bfloat16), torch.tensor([1.0, float("inf")]),
               torch.tensor([float("nan"), 1.0])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inf and NaN pass through silently, as in torch
        got = squared_norms(tensors)
    for t, value in zip(tensors, got):
        want = torch.linalg.vector_norm(t.double()).item() ** 2
        if math.isnan(want):
            assert math.isnan(value)
        else:
            assert value == pytest.approx(want, rel=1e-2 if t.dtype == torch.bfloat16 else 1e-5)


def test_a_large_cpu_layers_update_ratio_is_estimated_from_a_sample_of_its_weights():
    # 784x256 weights: over UPDATE_SAMPLE elements, so only a fixed sample of them is read
    # at a window's end; the bias (256) is read whole. The estimate is within a few
    # percent of the exact ratio, window after window.
    from esper.kasmina.health import UPDATE_SAMPLE

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    assert model[0].weight.numel() > UPDATE_SAMPLE >= model[0].bias.numel()
    wrapped = wrap(model, ["0"])
    monitor = HealthMonitor.for_slots(wrapped, every=1)
    stats = monitor._layers[0]
    assert [p.numel() for p in stats.prev] == [UPDATE_SAMPLE, 256]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        start = [p.detach().double().clone() for p in model[0].parameters()]
        wrapped(torch.randn(32, 784)).square().mean().backward()
        monitor.after_backward()
        opt.step()
        opt.zero_grad()
        h = monitor.step()[0]
        assert h.update_ratio == pytest.approx(_ratio_since(start, model[0]), rel=0.05)
    monitor.close()
