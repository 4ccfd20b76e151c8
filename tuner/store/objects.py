"""Where a study lives: a local directory, or an object store (`s3://`, `gs://`, `file://`).

With an object-store URI the study's home is `URI/NAME`: Tune and Train write there themselves
(trial results, TensorBoard files, experiment state, checkpoints), from whichever node runs
them. The files the search driver keeps (Optuna's SQLite storage, `study.json`, `trials.csv`,
the report) need a local file system, so the driver works in a local *working copy* and this
module moves files between the two with pyarrow's file systems (the ones Ray itself uses, so
credentials and endpoints, e.g. `AWS_ENDPOINT_URL`, resolve the same way for both).

Plain Python, no Ray.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from tuner.store.names import OPTUNA_DB, TRAIN_RUNS

# Model checkpoints stay in the object store: they are large and nothing local needs them.
REMOTE_ONLY = (TRAIN_RUNS,)
CACHE_ENV = "BATCH_SCALING_CACHE"
TRANSFER_THREADS = 16


class StorageError(Exception):
    """The object store cannot be reached or does not hold what was asked for (one line)."""


def is_uri(storage: str) -> bool:
    return "://" in storage


def join(uri: str, *parts: str) -> str:
    """`s3://bucket/prefix` + parts, with single slashes (a query string is not supported)."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def working_copy(uri: str) -> Path:
    """The local directory that mirrors `uri` on this machine, the same for every run here.

    `s3://bucket/studies` -> `~/.cache/batch-scaling/studies/s3/bucket/studies`
    (the root can be moved with $BATCH_SCALING_CACHE).
    """
    parts = urlsplit(uri)
    root = Path(os.environ.get(CACHE_ENV) or "~/.cache/batch-scaling").expanduser()
    return root / "studies" / parts.scheme / parts.netloc / parts.path.strip("/")


@contextmanager
def _one_line(what: str) -> Iterator[None]:
    """pyarrow's errors (OSError; ArrowInvalid is a ValueError) as a one-line StorageError."""
    try:
        yield
    except (OSError, ValueError) as error:
        text = str(error).strip() or type(error).__name__
        raise StorageError(f"{what}: {text.splitlines()[0]}") from None


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow file system and path for a URI, with a one-line error for a bad one."""
    with _one_line(f"cannot use storage {uri}"):
        return pafs.FileSystem.from_uri(uri)


def check_writable(uri: str) -> None:
    """Fail now, in one line, if `uri` cannot be written (no bucket, no credentials, ...).

    Writes and deletes a marker: listing alone succeeds on some stores without write access,
    and a study that cannot save its results must not start.
    """
    if urlsplit(uri).query:
        # Paths are joined onto the URI as strings, here and in Ray: a query would end up
        # in the middle of them.
        raise StorageError(
            f"storage {uri}: no query strings; set an S3-compatible endpoint with "
            "AWS_ENDPOINT_URL on every node instead"
        )
    fs, path = filesystem(uri)
    marker = f"{path.rstrip('/')}/.write-check-{os.getpid()}"
    with _one_line(f"cannot write to storage {uri}"):
        with fs.open_output_stream(marker) as stream:
            stream.write(b"ok")
        fs.delete_file(marker)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    with _one_line(f"cannot read storage {uri}"):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def download_file(uri: str, dest: Path) -> None:
    """Copy one object to a local file (atomically: a reader never sees half of it)."""
    fs, path = filesystem(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with (
            _one_line(f"cannot download {uri}"),
            fs.open_input_stream(path) as source,
            open(tmp, "wb") as sink,
        ):
            while chunk := source.read(1 << 20):
                sink.write(chunk)
    except StorageError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)


def upload_file(src: Path, uri: str) -> None:
    fs, path = filesystem(uri)
    with (
        _one_line(f"cannot upload {src} to {uri}"),
        open(src, "rb") as source,
        fs.open_output_stream(path) as sink,
    ):
        while chunk := source.read(1 << 20):
            sink.write(chunk)


def list_files(uri: str) -> list[str]:
    """Relative paths of every file under `uri` (empty if nothing is there)."""
    fs, path = filesystem(uri)
    base = PurePosixPath(path.rstrip("/"))
    with _one_line(f"cannot list storage {uri}"):
        infos = fs.get_file_info(pafs.FileSelector(str(base), recursive=True, allow_not_found=True))
    return sorted(
        str(PurePosixPath(i.path).relative_to(base)) for i in infos if i.type == pafs.FileType.File
    )


def download_study(uri: str, dest: Path, skip: tuple[str, ...] = (*REMOTE_ONLY, OPTUNA_DB)) -> int:
    """Copy a study's files from the object store into `dest`, all but the top-level entries in
    `skip`: checkpoints, and the Optuna database, which only `pull_optuna_db` may replace (a
    local one may be live and fresher). Returns the number of files copied."""
    files = [f for f in list_files(uri) if f.split("/", 1)[0] not in skip]
    _in_parallel(download_file, [(join(uri, f), dest / f) for f in files])
    return len(files)


def upload_study(src: Path, uri: str, skip: tuple[str, ...] = REMOTE_ONLY) -> int:
    """Copy every file of the local working copy `src` to the object store (Tune's own files
    too: after a finished fit they are the same as the ones there). Returns the count."""
    files = [
        p
        for p in sorted(src.rglob("*"))
        if p.is_file()
        and p.relative_to(src).parts[0] not in skip
        and not p.name.endswith((".part", "-journal"))
    ]
    _in_parallel(upload_file, [(p, join(uri, p.relative_to(src).as_posix())) for p in files])
    return len(files)


def _in_parallel(copy: Callable[..., None], pairs: list[tuple]) -> None:
    """Copy many small files at once: on a real object store each one is a round trip of
    tens of milliseconds, and a study has a few files per trial."""
    with ThreadPoolExecutor(max_workers=TRANSFER_THREADS) as pool:
        for future in [pool.submit(copy, *pair) for pair in pairs]:
            future.result()  # the first failure, as a StorageError
