"""`--mlflow URI` and `--optuna-storage URL`: refused in one line before anything starts (a
malformed address, a server that does not answer, a database that refuses the login), and what
a study keeps of them for `--resume` (`tracking.json`: never a password)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import InputError

TRACKING_FILE = "tracking.json"
TIMEOUT_S = 5.0
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "mssql", "oracle")
MISSING_EXTRA = "install the mlflow extra: pip install -e '.[mlflow]'"


def add_options(parser: Any) -> None:
    """`--mlflow` and `--optuna-storage` on the CLI's parser (tuner.options)."""
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="also log the study to this MLflow tracking server (http://HOST:PORT, file:/PATH "
        "or a database URL): one parent run, a nested run per trial, the report at the end; "
        "experiment $MLFLOW_EXPERIMENT_NAME (default batch-scaling); needs .[mlflow]",
    )
    parser.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="also keep the per-cell Optuna studies in this database (postgresql://USER@HOST/DB "
        "or any SQLAlchemy URL; password from the URL or the driver's usual variable, e.g. "
        "PGPASSWORD), live for optuna-dashboard; the study directory keeps its own optuna.db",
    )


def check_tracking(args: Any, study_dir: Path, study_name: str, branch: bool) -> Tracking:
    """The tracking this run of a study uses (a resumed study's own unless told otherwise),
    checked: `InputError` before anything starts or is written."""
    if args.resume:
        tracking = resumed_tracking(study_dir, args.mlflow, args.optuna_storage)
    else:
        tracking = Tracking(args.mlflow, args.optuna_storage)
    if tracking.optuna_storage and branch:
        raise InputError(
            "--optuna-storage: a branch study keeps no per-cell Optuna studies (its runs are "
            "in branch.json); use it with the grid method"
        )
    if tracking.mlflow:
        try:
            check_mlflow(tracking.mlflow)
        except InputError as error:
            if args.mlflow is None:  # the resumed study's own (tracking.json)
                raise InputError(
                    f"{error}; the study logs to it ({TRACKING_FILE}): start that server, or "
                    f"give --mlflow with where it runs now"
                ) from None
            raise
    if tracking.optuna_storage:
        check_optuna_storage(tracking.optuna_storage, study_name, bool(args.resume))
    return tracking


@dataclass(frozen=True)
class Tracking:
    """Where this run of a study reports besides its own directory."""

    mlflow: str | None = None
    optuna_storage: str | None = None

    def __bool__(self) -> bool:
        return bool(self.mlflow or self.optuna_storage)


def shown(url: str) -> str:
    """A database URL as it may be printed or saved: its password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # malformed: say nothing of it beyond its scheme
        return url.split("://", 1)[0] + "://..." if "://" in url else repr(url)


def check_mlflow(uri: str) -> None:
    """An MLflow tracking URI this machine can reach: an http(s) server that answers its
    health check, a `file:` store, or a database URL; else `InputError`."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise InputError(f"--mlflow needs MLflow: {MISSING_EXTRA}") from None
    parts = urllib.parse.urlparse(uri)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise InputError(f"--mlflow {uri}: no host (use http://HOST:PORT of an MLflow server)")
        try:
            parts.port  # noqa: B018  (a malformed port raises here)
        except ValueError:
            raise InputError(f"--mlflow {uri}: the port is not a number") from None
        _answers(uri)
    elif scheme == "file" or (not parts.scheme and uri.startswith("/")):
        return
    elif scheme in DB_SCHEMES:
        _connects(uri, "--mlflow")
    else:
        raise InputError(
            f"--mlflow {uri}: use http(s)://HOST:PORT of an MLflow tracking server, file:/PATH "
            f"or a database URL (sqlite:///PATH, postgresql://...)"
        )


def _answers(uri: str) -> None:
    """The server answers MLflow's health check (`/health`)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_S) as reply:
            if reply.status == 200:
                return
            problem = f"HTTP {reply.status}"
    except urllib.error.HTTPError as error:
        problem = f"HTTP {error.code} from its /health"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        problem = str(reason).strip() or type(error).__name__
    raise InputError(f"--mlflow {uri}: no MLflow server answers there ({problem})")


def check_optuna_storage(url: str, study_name: str, resume: bool) -> None:
    """A database Optuna can use (SQLAlchemy reaches it and the login is accepted) that holds no
    other study of this name; else `InputError`."""
    _connects(url, "--optuna-storage")
    if resume:
        return
    taken = _studies_named(url, study_name)
    if taken:
        raise InputError(
            f"--optuna-storage {shown(url)} already holds {taken[0]!r}: another study of the "
            f"name {study_name}; choose another --name"
        )


def _engine(url: str, flag: str):
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InputError(
            f"{flag} {shown(url)}: not a database URL (postgresql://USER@HOST/DB, "
            f"mysql+pymysql://..., sqlite:////abs/path.db)"
        ) from None
    args = {} if parsed.get_backend_name() == "sqlite" else {"connect_timeout": int(TIMEOUT_S)}
    try:
        return create_engine(parsed, connect_args=args)
    except (NoSuchModuleError, ImportError, ModuleNotFoundError) as error:
        raise InputError(
            f"{flag} {shown(url)}: no database driver for it here ({error}); install it "
            f"(PostgreSQL: pip install 'psycopg[binary]')"
        ) from None


def _connects(url: str, flag: str) -> None:
    """SQLAlchemy connects with the URL's login (nothing is written)."""
    from sqlalchemy.exc import SQLAlchemyError

    engine = _engine(url, flag)
    try:
        with engine.connect():
            pass
    except (SQLAlchemyError, OSError) as error:
        first = str(getattr(error, "orig", None) or error).strip().splitlines()
        raise InputError(
            f"{flag} {shown(url)}: cannot connect ({first[0] if first else type(error).__name__})"
        ) from None
    finally:
        engine.dispose()


def _studies_named(url: str, study_name: str) -> list[str]:
    """Optuna studies `study_name/...` in the database at `url`, read without creating Optuna's
    tables (a fresh database has none)."""
    from sqlalchemy import inspect, text

    engine = _engine(url, "--optuna-storage")
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("studies"):
                return []
            rows = connection.execute(
                text("SELECT study_name FROM studies WHERE study_name LIKE :prefix"),
                {"prefix": f"{study_name}/%"},
            )
            return sorted(row[0] for row in rows)
    finally:
        engine.dispose()


def save_tracking(study_dir: Path, tracking: Tracking, **mlflow_ids: str) -> None:
    """What `--resume` needs of the tracking: the MLflow URI and its parent run, the Optuna
    database's URL without its password."""
    path = study_dir / TRACKING_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    if tracking.mlflow:
        data["mlflow"] = {**data.get("mlflow", {}), "uri": tracking.mlflow, **mlflow_ids}
    if tracking.optuna_storage:
        data["optuna_storage"] = shown(tracking.optuna_storage)
    study_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def saved_tracking(study_dir: Path) -> dict:
    """`tracking.json` of a study ({} where it has none or it does not parse)."""
    try:
        data = json.loads((study_dir / TRACKING_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resumed_tracking(study_dir: Path, mlflow: str | None, optuna_storage: str | None) -> Tracking:
    """A resumed study reports where it did before, unless told otherwise; a saved database URL
    whose password was masked must be given again."""
    saved = saved_tracking(study_dir)
    if mlflow is None:
        mlflow = (saved.get("mlflow") or {}).get("uri")
    if optuna_storage is None and saved.get("optuna_storage"):
        optuna_storage = saved["optuna_storage"]
        if "***" in optuna_storage:
            raise InputError(
                f"the study mirrored its Optuna studies to {optuna_storage}; give "
                f"--optuna-storage with its password again (it is not saved) to resume it"
            )
    return Tracking(mlflow, optuna_storage)
