"""Sharpness, interpolation and landscapes against known answers (trainables.geometry)."""

import pytest
import torch
from torch import nn

from trainables import geometry
from trainables.models import build_model


class Quadratic(nn.Module):
    """loss(w) = 0.5 w^T A w: its Hessian is A everywhere."""

    def __init__(self, a: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.w @ self.a @ self.w + 0 * x.sum()


def quadratic(top: float, seed: int = 0) -> Quadratic:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=generator, dtype=torch.float64))
    eigenvalues = torch.linspace(0.1, top * 0.8, 20, dtype=torch.float64)
    eigenvalues[-1] = top
    a = q @ torch.diag(eigenvalues) @ q.T
    return Quadratic(a, torch.randn(20, generator=generator, dtype=torch.float64))


ONE = [(torch.zeros(1, dtype=torch.float64), torch.zeros(1))]


def value(out, _y):
    return out


def test_top_hessian_eigenvalue_of_a_known_quadratic():
    model = quadratic(top=7.5)
    found = geometry.top_hessian_eigenvalue(model, ONE, value, iterations=200, tolerance=1e-8)
    assert found == pytest.approx(7.5, rel=0.01)


def test_epsilon_sharpness_grows_with_curvature_and_restores_the_weights():
    flat, sharp = quadratic(top=1.0), quadratic(top=50.0)
    before = flat.w.detach().clone()
    s_flat = geometry.epsilon_sharpness(flat, ONE, epsilon=1e-2, loss_fn=value)
    s_sharp = geometry.epsilon_sharpness(sharp, ONE, epsilon=1e-2, loss_fn=value)
    assert 0 < s_flat < s_sharp
    assert torch.equal(flat.w.detach(), before)


def small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet8", (3, 8, 8), 4)


def batches(seed: int, n: int = 2):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, 3, 8, 8, generator=generator),
            torch.randint(0, 4, (16,), generator=generator),
        )
        for _ in range(n)
    ]


def test_filter_normalised_direction_keeps_each_filters_norm():
    model = small_cnn(0)
    direction = geometry.filter_normalised_direction(model, seed=1)
    for p, d in zip([p for p in model.parameters()], direction, strict=True):
        if p.ndim <= 1:
            assert not d.any()  # biases and BatchNorm stay put
        else:
            assert torch.allclose(
                d.reshape(len(d), -1).norm(dim=1), p.reshape(len(p), -1).norm(dim=1), rtol=1e-5
            )


def test_interpolation_ends_are_the_two_solutions():
    train, val = batches(0), batches(1)
    small, large = small_cnn(0), small_cnn(1)
    for model in (small, large):  # real BatchNorm statistics on each
        geometry.recompute_bn(model, train)
    rows = geometry.interpolate(
        small_cnn(2), small.state_dict(), large.state_dict(), [-1.0, 0.0, 0.5, 1.0, 2.0], train, val
    )
    assert [r["alpha"] for r in rows] == [-1.0, 0.0, 0.5, 1.0, 2.0]
    assert rows[1]["train_loss"] == pytest.approx(geometry.mean_loss(small, train), rel=1e-6)
    assert rows[3]["val_loss"] == pytest.approx(geometry.mean_loss(large, val), rel=1e-6)
    assert rows[3]["val_acc"] == pytest.approx(geometry.accuracy(large, val))


def test_landscape_is_the_loss_at_its_origin_and_restores_the_model():
    model, data = small_cnn(0), batches(0)
    geometry.recompute_bn(model, data)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    d1 = geometry.filter_normalised_direction(model, 1)
    d2 = geometry.filter_normalised_direction(model, 2)
    line = geometry.landscape(model, data, [d1], [(-1.0,), (0.0,), (1.0,)])
    grid = geometry.landscape(
        model, data, [d1, d2], [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    )
    origin = geometry.mean_loss(model, data)
    assert line[1] == pytest.approx(origin, rel=1e-5) and grid[4] == pytest.approx(origin, rel=1e-5)
    assert line[0] > origin and line[2] > origin  # a unit filter-normalised step is far
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
