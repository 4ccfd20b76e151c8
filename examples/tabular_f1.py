"""A user's own 8-class tabular classifier judged by a metric of its own, the macro-F1: an MLP
trained with AdamW on scikit-learn's generated classification problem (no download).

    python -m tuner.search examples/tabular_f1.py:workload --name tabular

Measured (its defaults, 2 CPUs, stopped after 94 trials; re-reported with `python -m
tuner.report`): best macro-F1 0.957 / 0.954 / 0.952 / 0.946 at batch 32 / 128 / 512 / 2048.
At a target of 0.8 three of the four batch sizes are past it at their first evaluation ("32:
before step 200, 128: before step 50, 2048: before step 15": upper bounds, issue 36) and the
critical batch size is not fitted; at 0.9 (the default here) every crossing is resolved: 613,
128, 60 and 32 steps, B_crit about 638 (95% CI 511-1250); at 0.93, 1150 (757-2520).
"""

import torch
from torch import nn

from tuner import Metric, Workload

CLASSES = 8


def data(data_dir: str, seed: int):
    """(train, val): 16,000 and 4,000 draws of one 8-class problem (20 features, 12 of them
    informative), standardised on the training part; the problem is fixed, the study's seed
    shuffles which draws validate."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=20_000, n_features=20, n_informative=12, n_redundant=4, n_classes=CLASSES,
        n_clusters_per_class=2, class_sep=1.5, random_state=0,
    )  # fmt: skip
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = order[:4000], order[4000:]
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / std
    return (x[train], y[train]), (x[val], y[val])


def model(input_shape, num_classes):
    (features,) = input_shape
    return nn.Sequential(
        nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )  # fmt: skip


def macro_f1(outputs, targets) -> float:
    """The unweighted mean of the per-class F1 scores over the validation set."""
    predicted = outputs.argmax(-1)
    scores = []
    for label in range(CLASSES):
        hit = ((predicted == label) & (targets == label)).sum().item()
        said = (predicted == label).sum().item()
        true = (targets == label).sum().item()
        scores.append(2 * hit / (said + true) if said + true else 0.0)
    return sum(scores) / CLASSES


workload = Workload(
    name="tabular_f1_mlp",
    model=model,
    data=data,
    metric=Metric("macro_f1", macro_f1, mode="max", tolerance=0.01),
    optimizer="adamw",
    batch_sizes=(32, 128, 512, 2048),
    budget="epochs:8",
    min_steps=300,
    target=0.9,
    description="an 8-class tabular MLP with AdamW, judged by macro-F1 (your own metric)",
)
