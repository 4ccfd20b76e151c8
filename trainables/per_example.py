"""A run's per-example result on the validation split, as one short string in its last report.

Two runs scored on the same validation examples are compared example by example
(`tuner.analysis.paired`): what they both get right or wrong cancels from their difference. For
that every run that ends its budget keeps, with its final evaluation, the study metric of each
validation example in the split's order: correctness (0/1, or a sequence's share of tokens
right) for an accuracy, the example's mean loss for a loss. A 0/1 vector is packed 8 to a byte
(ImageNet's 50,000: 8.3 kB of text); anything else is stored as float16 (3 significant digits:
plenty beside a loss's spread over examples).
"""

from __future__ import annotations

import base64

import numpy as np

BITS, HALF, SINGLE = "b", "h", "f"


def encode(values: np.ndarray) -> str:
    """`values` (1-D) as text: 'b:N:<packed bits>' when all are 0 or 1, else 'h:<float16>'."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isin(values, (0.0, 1.0)).all():
        packed = np.packbits(values.astype(np.uint8))
        return f"{BITS}:{values.size}:{base64.b64encode(packed.tobytes()).decode()}"
    half = values.astype("<f2").tobytes()
    return f"{HALF}:{base64.b64encode(half).decode()}"


def encode_single(values: np.ndarray) -> str:
    """`values` (1-D) as float32 text, 'f:<float32>': for values whose spread may be small
    beside their size (a metric's bootstrap replicates, `trainables.metric_boot`)."""
    single = np.asarray(values, dtype="<f4").reshape(-1).tobytes()
    return f"{SINGLE}:{base64.b64encode(single).decode()}"


def decode(text: str) -> np.ndarray:
    """The float64 vector `encode` was given (float16-rounded where it was not 0/1)."""
    kind, _, rest = text.partition(":")
    if kind == BITS:
        size, _, data = rest.partition(":")
        bits = np.unpackbits(np.frombuffer(base64.b64decode(data), dtype=np.uint8))
        return bits[: int(size)].astype(np.float64)
    if kind == HALF:
        return np.frombuffer(base64.b64decode(rest), dtype="<f2").astype(np.float64)
    if kind == SINGLE:
        return np.frombuffer(base64.b64decode(rest), dtype="<f4").astype(np.float64)
    raise ValueError(f"not a per-example record: {text[:20]!r}")
