"""The names of a study's files, in one place for the CLI, the driver, the searcher and the report.

A study lives in `STORAGE/NAME/` (a directory, or an object-store prefix with a local working
copy; `tuner.store.objects`).
"""

SPEC_FILE = "study.json"  # the resolved spec, package versions, git revision
OPTUNA_DB = "optuna.db"  # Optuna's SQLite storage: every trial's parameters, state, outcome
# A copy of OPTUNA_DB saved with every searcher checkpoint (tuner/study/searcher.py).
OPTUNA_SNAPSHOT = "optuna-snapshot.db"
TABLE_FILE = "trials.csv"  # the tidy trial table (tuner/store/table.py)
TRAIN_RUNS = "train_runs"  # Ray Train's run directories with the trials' checkpoints
