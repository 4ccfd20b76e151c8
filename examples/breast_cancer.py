"""A user's own classification workload: a small MLP on scikit-learn's bundled breast-cancer
data (569 tumours, 30 features; no download).

    python -m tuner.search examples/breast_cancer.py:workload --name cancer

Judged by validation accuracy (the default metric) with cross-entropy (the default loss).
"""

import torch
from torch import nn

from tuner import Workload


def data(data_dir: str, seed: int):
    """(train, val): 80/20, split by the study's seed, features standardised on the training
    part. `data_dir` is unused: the data ships with scikit-learn."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = order[: len(y) // 5], order[len(y) // 5 :]
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / std
    return (x[train], y[train]), (x[val], y[val])


def model(input_shape, num_classes):
    (features,) = input_shape
    return nn.Sequential(
        nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes)
    )


workload = Workload(
    name="breast_cancer_mlp",
    model=model,
    data=data,
    batch_sizes=(8, 16, 32, 64, 128),
    budget="epochs:20",
    min_steps=200,
    target=0.95,
    description="an MLP on scikit-learn's breast-cancer data (an example of your own model)",
)
