"""A user's own regression workload with its own loss and a minimised metric of its own: an
MLP on Friedman's #1 problem (scikit-learn's generator: 10 features, 5 of them used, Gaussian
noise of standard deviation 1; no download).

    python -m tuner.search examples/regression.py:workload --name friedman

Trained with the Huber loss on standardised targets; judged by the validation mean absolute
error in the targets' own units (lower is better, so `mode="min"`); a batch size "holds" while
its error stays within 0.05 of the baseline's.
"""

import torch
from torch import nn
from torch.nn import functional as F

from tuner import Metric, Workload

TARGET_SCALE = 5.0  # Friedman #1's targets have a standard deviation of about 5


def data(data_dir: str, seed: int):
    """(train, val): 4,000 and 1,000 draws of the same problem (the study's seed makes the
    validation draws, the same for every trial of a study)."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=5000, noise=1.0, random_state=seed)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)
    y = (y - y[:4000].mean()) / TARGET_SCALE
    return (x[:4000], y[:4000]), (x[4000:], y[4000:])


def model(input_shape):
    (features,) = input_shape
    return nn.Sequential(
        nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1)
    )


def loss(outputs, targets):
    return F.huber_loss(outputs.squeeze(-1), targets)


def mean_absolute_error(outputs, targets) -> float:
    """In the targets' own units (the model predicts standardised ones)."""
    return float((outputs.squeeze(-1) - targets).abs().mean() * TARGET_SCALE)


workload = Workload(
    name="friedman_mlp",
    model=model,
    data=data,
    loss=loss,
    metric=Metric("mae", mean_absolute_error, mode="min", tolerance=0.05),
    batch_sizes=(16, 64, 256),
    budget="epochs:10",
    min_steps=300,
    target=1.2,
    description="an MLP regression on Friedman #1 (an example of your own loss and metric)",
)
