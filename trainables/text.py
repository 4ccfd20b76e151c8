"""Byte-level text data sets for the language models: no tokenizer, a vocabulary of 256 bytes.

A corpus is its files' bytes concatenated in sorted path order (a blank line between files),
cut into non-overlapping chunks of `SEQ_LEN + 1` bytes: x is a chunk without its last byte, y
without its first, so the model predicts every next byte. x is held as uint8 (a quarter of the
memory of int64, cast in the model's forward); y is int64 because the loss needs long targets.

`stdlib` is the running Python's own standard library: it needs no download and no files of
the user's, so it is the default corpus. Its content follows the Python version, so compare
studies run on the same version. `text` is a folder of the user's `.txt` files.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from trainables.splits import DataUnavailable, Splits, split_holdout

SEQ_LEN = 128  # tokens (bytes) per example
VOCAB = 256
SEPARATOR = b"\n\n"  # between files, so that no example silently joins two files mid-line
STDLIB_MAX_BYTES = 8_000_000  # ~62k sequences; loads in well under a second
TEXT_MAX_BYTES = 64_000_000  # y as int64 costs 8 bytes per byte of text: 512 MB at this cap
MIN_CHUNKS = 200  # a `text` corpus smaller than this is too small to hold out a split
VAL_FRACTION = 0.05
MIN_VAL = 64
# Folders of the standard library that are not library code (tests, the IDE) or not stdlib.
STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib"})


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's `.py` files, sorted by path relative to its root."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP]
        found += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def text_files(root: Path) -> list[Path]:
    """The `.txt` files under `root` (recursively), sorted by relative path."""
    found = [p for p in root.rglob("*") if p.suffix.lower() == ".txt" and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_corpus(files: Iterable[Path], max_bytes: int) -> bytes:
    """The files' bytes joined by `SEPARATOR`, cut at `max_bytes`; reading stops there."""
    parts, total = [], 0
    for path in files:
        if total >= max_bytes:
            break
        data = (SEPARATOR if parts else b"") + path.read_bytes()
        parts.append(data)
        total += len(data)
    return b"".join(parts)[:max_bytes]


def chunk(corpus: bytes, seq_len: int = SEQ_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping next-byte examples: x (N, seq_len) uint8, y (N, seq_len) int64."""
    tokens = np.frombuffer(corpus, dtype=np.uint8)
    n = len(tokens) // (seq_len + 1)
    chunks = torch.from_numpy(tokens[: n * (seq_len + 1)].copy()).view(n, seq_len + 1)
    return chunks[:, :-1].contiguous(), chunks[:, 1:].long()


def token_splits(name: str, corpus: bytes, seed: int) -> Splits:
    """A corpus as a `Splits`: a seeded 5% of the chunks (at least 64) held out."""
    x, y = chunk(corpus)
    val_size = max(MIN_VAL, round(VAL_FRACTION * len(y)))
    train, val = split_holdout(x, y, val_size, seed)
    return Splits(name, train, val, (SEQ_LEN,), VOCAB, tokens_per_example=SEQ_LEN)


def load_stdlib(data_dir: str, seed: int) -> Splits:
    """The first `STDLIB_MAX_BYTES` of the standard library's source (`data_dir` unused)."""
    return token_splits("stdlib", read_corpus(stdlib_files(), STDLIB_MAX_BYTES), seed)


def load_text(data_dir: str, seed: int) -> Splits:
    """The `.txt` files under `data_dir` (UTF-8 or any bytes), up to `TEXT_MAX_BYTES`."""
    root = Path(data_dir)
    need = MIN_CHUNKS * (SEQ_LEN + 1)
    hint = (
        f"pass --data-dir DIR holding .txt files (at least {need} bytes in all), "
        f"or use --dataset stdlib, which needs no files"
    )
    if not root.is_dir():
        raise DataUnavailable(f"text: no folder at {root}; {hint}")
    files = text_files(root)
    if not files:
        raise DataUnavailable(f"text: no .txt files under {root}; {hint}")
    corpus = read_corpus(files, TEXT_MAX_BYTES)
    if len(corpus) < need:
        raise DataUnavailable(
            f"text: only {len(corpus)} bytes in {len(files)} .txt file(s) under {root}; {hint}"
        )
    return token_splits("text", corpus, seed)
