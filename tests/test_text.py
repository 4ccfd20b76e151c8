"""Byte-level text corpora, the MNIST 5k sample, and the language models learning from them."""

import time

import pytest
import torch

from trainables.datasets import DataUnavailable, check_data, load_dataset
from trainables.models import build_model
from trainables.optim import build_optimizer, param_groups
from trainables.text import (
    MIN_CHUNKS,
    SEPARATOR,
    SEQ_LEN,
    VOCAB,
    chunk,
    read_corpus,
    stdlib_files,
    token_splits,
)

LINES = {
    "a.txt": "The quick brown fox jumps over the lazy dog.\n",
    "b.txt": "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.\n",
    "sub/c.txt": "Съешь же ещё этих мягких французских булок, да выпей чаю. 東京 🦊\n",
}


def write_corpus(root, repeats: int = 120) -> bytes:
    """Write the files (nested, non-ASCII) and return the bytes the loader should read."""
    for name, line in LINES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(line * repeats, encoding="utf-8")
    (root / "notes.md").write_text("not a .txt file\n")  # ignored
    return SEPARATOR.join((root / name).read_bytes() for name in sorted(LINES))


def test_text_folder_round_trips_bytes(tmp_path):
    corpus = write_corpus(tmp_path)
    splits = load_dataset("text", str(tmp_path), seed=0)
    train, val = splits.train, splits.val
    assert (splits.input_shape, splits.num_classes, splits.tokens_per_example) == (
        (SEQ_LEN,),
        VOCAB,
        SEQ_LEN,
    )
    assert len(train) + len(val) == len(corpus) // (SEQ_LEN + 1)
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    # y is x shifted by one byte, and x then y's last byte is a piece of the files' bytes.
    assert torch.equal(train.x[0, 1:].long(), train.y[0, :-1])
    piece = bytes(train.x[0].tolist()) + bytes([int(train.y[0, -1])])
    assert piece in corpus
    # The first chunk, before the split, starts the first file; it decodes as UTF-8 text.
    x, y = chunk(corpus)
    assert bytes(x[0].tolist()) == corpus[:SEQ_LEN]
    assert bytes(y[0].tolist()) == corpus[1 : SEQ_LEN + 1]
    assert "Съешь" in corpus.decode("utf-8")


def test_text_split_is_fixed_by_the_seed(tmp_path):
    write_corpus(tmp_path)
    first = load_dataset("text", str(tmp_path), seed=0)
    again = load_dataset("text", str(tmp_path), seed=0)
    other = load_dataset("text", str(tmp_path), seed=1)
    assert len(first.val) >= 64
    assert torch.equal(first.val.x, again.val.x) and torch.equal(first.train.y, again.train.y)
    assert not torch.equal(first.val.x, other.val.x)


def test_text_split_is_disjoint():
    # Chunk i starts at byte 129 * i mod 256: 256 chunks with 256 different starts, so a row
    # identifies its position (write_corpus's repeated lines can make two chunks equal).
    corpus = bytes(range(256)) * (SEQ_LEN + 1)
    splits = token_splits("text", corpus, seed=0)
    train = {bytes(row.tolist()) for row in splits.train.x}
    val = {bytes(row.tolist()) for row in splits.val.x}
    assert len(train) == len(splits.train) and len(val) == len(splits.val)
    assert not train & val
    assert len(train) + len(val) == len(corpus) // (SEQ_LEN + 1)


def test_text_max_train_examples_subsets(tmp_path):
    write_corpus(tmp_path)
    splits = load_dataset("text", str(tmp_path), seed=0, max_train_examples=100)
    assert len(splits.train) == 100 and len(splits.val) == 64
    assert splits.train.x.shape == (100, SEQ_LEN)


@pytest.mark.parametrize("case", ["missing", "empty", "too_small"])
def test_unusable_text_folder_says_so_in_one_line(tmp_path, case):
    root = tmp_path / "corpus"
    if case != "missing":
        root.mkdir()
    if case == "too_small":
        (root / "short.txt").write_text("too short\n" * 10)
    with pytest.raises(DataUnavailable) as error:
        check_data("text", str(root))
    message = str(error.value)
    assert "\n" not in message and str(root) in message and "--data-dir" in message
    assert str(MIN_CHUNKS * (SEQ_LEN + 1)) in message


def test_stdlib_corpus_loads_offline_quickly(tmp_path):
    started = time.monotonic()
    splits = load_dataset("stdlib", str(tmp_path), seed=0)
    assert time.monotonic() - started < 5
    assert len(splits.train) > 10_000 and len(splits.val) >= 64
    assert splits.train.x.shape[1:] == (SEQ_LEN,) and splits.tokens_per_example == SEQ_LEN
    assert splits.num_classes == VOCAB
    assert not list(tmp_path.iterdir())  # nothing cached


def test_mnist5k_loads_offline_stratified(tmp_path):
    splits = load_dataset("mnist5k", str(tmp_path), seed=0)
    assert (len(splits.train), len(splits.val)) == (4000, 1000)
    assert splits.train.x.shape[1:] == (1, 28, 28) and splits.num_classes == 10
    assert splits.tokens_per_example == 0
    assert set(splits.train.y.tolist()) == set(splits.val.y.tolist()) == set(range(10))
    assert abs(float(splits.train.x.mean())) < 1e-3  # standardised with training statistics
    cached = load_dataset("mnist5k", str(tmp_path), seed=0)
    assert torch.equal(cached.val.x, splits.val.x)
    other = load_dataset("mnist5k", str(tmp_path), seed=1)
    assert not torch.equal(other.val.x, splits.val.x)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core machine, two threads spin-wait for each other
    (measured: the same 100 steps took 15 s idle, 48 s beside another test run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_steps(model: torch.nn.Module, steps: int, lr: float, batch: int = 32) -> float:
    """AdamW on the start of the stdlib corpus; the mean loss of the last 10 steps."""
    x, y = chunk(read_corpus(stdlib_files(), 2048 * (SEQ_LEN + 1)))
    optimizer = build_optimizer("adamw", param_groups(model, 1e-3), lr=lr)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[-10:]) / 10


def test_tiny_transformer_learns_bytes(one_thread):
    torch.manual_seed(0)
    model = build_model("transformer_lm_tiny", (SEQ_LEN,), VOCAB)
    assert train_steps(model, 100, 3e-3) < 3.5  # ln 256 = 5.55 at chance


def test_small_lstm_learns_bytes(one_thread):
    from trainables.models import LSTMLM

    torch.manual_seed(0)
    model = LSTMLM((SEQ_LEN,), VOCAB, hidden=64)  # lstm_lm's 256 units take 50 s here
    assert train_steps(model, 100, 1e-2) < 3.5
