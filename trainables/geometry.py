"""The shape of the loss around a trained solution: sharpness, interpolation, landscapes.

Plain PyTorch on any model and a fixed list of (x, y) batches, so that every number is computed
on the same data (science.md section 4):

- `top_hessian_eigenvalue`: power iteration on Hessian-vector products (double backward) of the
  mean training loss over the batches;
- `epsilon_sharpness`: Keskar et al.'s measure, the largest relative loss increase within the box
  |delta_i| <= eps (|w_i| + 1), found by projected gradient ascent (they use L-BFGS-B; a few
  signed-gradient steps reach the box's corners, which is where the maximum of a convex-ish loss
  lies);
- `interpolate`: the loss along w(a) = a w_large + (1 - a) w_small (Keskar et al., a in [-1, 2]),
  BatchNorm statistics recomputed at every point;
- `filter_normalised_direction` and `landscape`: Li et al.'s random directions, each filter
  rescaled to the norm of the weights' filter, zero for biases and BatchNorm; the loss on a 1-D
  line or a 2-D grid around the solution.

BatchNorm: the loss is evaluated in eval mode with running statistics; after moving the weights,
`recompute_bn` re-estimates those statistics on the batches (as Keskar and Li do).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def mean_loss(model: nn.Module, batches: Batches, loss_fn: LossFn | None = None) -> float:
    """Mean loss over the batches' examples, in eval mode, without gradients."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            total += float(loss_fn(model(x), y)) * y.numel()
            count += y.numel()
    model.train(was_training)
    return total / count


def accuracy(model: nn.Module, batches: Batches) -> float:
    """Fraction of correct argmax predictions over the batches, in eval mode."""
    was_training = model.training
    model.eval()
    correct, count = 0, 0
    with torch.no_grad():
        for x, y in batches:
            correct += int((model(x).argmax(1) == y).sum())
            count += y.numel()
    model.train(was_training)
    return correct / count


def recompute_bn(model: nn.Module, batches: Batches) -> None:
    """Re-estimate every BatchNorm's running statistics on the batches (cumulative average)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    was_training = model.training
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    model.train(was_training)
    for m, momentum in saved.items():
        m.momentum = momentum


def _loss_with_grad(model: nn.Module, batches: Batches, loss_fn: LossFn) -> torch.Tensor:
    count = sum(y.numel() for _, y in batches)
    return sum(loss_fn(model(x), y) * y.numel() for x, y in batches) / count


def top_hessian_eigenvalue(
    model: nn.Module,
    batches: Batches,
    loss_fn: LossFn | None = None,
    iterations: int = 50,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> float:
    """The largest-magnitude eigenvalue of the training loss's Hessian (power iteration).

    The model runs in eval mode (BatchNorm with its running statistics), so the loss is a fixed
    function of the weights.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = _params(model)
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    vector = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    eigenvalue = 0.0
    try:
        for _ in range(iterations):
            norm = torch.sqrt(sum((v * v).sum() for v in vector))
            vector = [v / norm for v in vector]
            loss = _loss_with_grad(model, batches, loss_fn)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            product = torch.autograd.grad(grads, params, grad_outputs=vector)
            new = float(sum((h * v).sum() for h, v in zip(product, vector, strict=True)))
            vector = [h.detach() for h in product]
            converged = abs(new - eigenvalue) <= tolerance * max(abs(new), 1e-12)
            eigenvalue = new
            if converged:
                break
    finally:
        model.train(was_training)
    return eigenvalue


def epsilon_sharpness(
    model: nn.Module,
    batches: Batches,
    epsilon: float = 1e-3,
    loss_fn: LossFn | None = None,
    steps: int = 10,
) -> float:
    """Keskar et al.'s sharpness: 100 x (max loss in the box - loss) / (1 + loss), where the box
    is |delta_i| <= epsilon (|w_i| + 1). The model's weights are restored afterwards."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = _params(model)
    original = [p.detach().clone() for p in params]
    radius = [epsilon * (w.abs() + 1) for w in original]
    base = mean_loss(model, batches, loss_fn)
    best = base
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            loss = _loss_with_grad(model, batches, loss_fn)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g, w, r in zip(params, grads, original, radius, strict=True):
                    step = p + r * g.sign() * 0.5
                    p.copy_(torch.maximum(torch.minimum(step, w + r), w - r))
            best = max(best, mean_loss(model, batches, loss_fn))
    finally:
        with torch.no_grad():
            for p, w in zip(params, original, strict=True):
                p.copy_(w)
        model.train(was_training)
    return 100 * (best - base) / (1 + base)


def _set_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    model.load_state_dict(state)


def interpolate(
    model: nn.Module,
    small: dict[str, torch.Tensor],
    large: dict[str, torch.Tensor],
    alphas: Sequence[float],
    train_batches: Batches,
    val_batches: Batches,
    loss_fn: LossFn | None = None,
) -> list[dict[str, float]]:
    """Loss and accuracy on both splits at w(a) = a large + (1 - a) small, for every a.

    Floating-point entries are interpolated; BatchNorm's running statistics are then recomputed
    on the training batches (the interpolated ones mean nothing). Integer entries (BatchNorm's
    batch counters) are taken from `small`.
    """
    rows = []
    for alpha in alphas:
        state = {
            k: (alpha * large[k] + (1 - alpha) * v) if v.is_floating_point() else v
            for k, v in small.items()
        }
        _set_state(model, state)
        if alpha not in (0.0, 1.0):
            recompute_bn(model, train_batches)
        rows.append(
            {
                "alpha": float(alpha),
                "train_loss": mean_loss(model, train_batches, loss_fn),
                "train_acc": accuracy(model, train_batches),
                "val_loss": mean_loss(model, val_batches, loss_fn),
                "val_acc": accuracy(model, val_batches),
            }
        )
    return rows


def filter_normalised_direction(model: nn.Module, seed: int) -> list[torch.Tensor]:
    """Li et al.'s direction: Gaussian, each filter (output row) scaled to the weight filter's
    norm; zero for 0-d/1-d parameters (biases, BatchNorm)."""
    generator = torch.Generator().manual_seed(seed)
    direction = []
    for p in _params(model):
        d = torch.randn(p.shape, generator=generator).to(p)
        if p.ndim <= 1:
            direction.append(torch.zeros_like(p))
            continue
        flat_d, flat_w = d.reshape(len(d), -1), p.detach().reshape(len(p), -1)
        scale = flat_w.norm(dim=1, keepdim=True) / (flat_d.norm(dim=1, keepdim=True) + 1e-10)
        direction.append((flat_d * scale).reshape(p.shape))
    return direction


def landscape(
    model: nn.Module,
    batches: Batches,
    directions: Sequence[list[torch.Tensor]],
    coordinates: Sequence[Sequence[float]],
    bn_batches: Batches | None = None,
    loss_fn: LossFn | None = None,
) -> list[float]:
    """Loss at w + sum_k c_k d_k for every coordinate tuple c (1-D: (a,), 2-D: (a, b)).

    BatchNorm statistics are recomputed at every point on `bn_batches` (default `batches`); the
    model's weights and statistics are restored afterwards.
    """
    params = _params(model)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    origin = [p.detach().clone() for p in params]
    losses = []
    try:
        for coords in coordinates:
            with torch.no_grad():
                for i, p in enumerate(params):
                    p.copy_(
                        origin[i] + sum(c * d[i] for c, d in zip(coords, directions, strict=True))
                    )
            recompute_bn(model, bn_batches or batches)
            losses.append(mean_loss(model, batches, loss_fn))
    finally:
        model.load_state_dict(saved)
    return losses
