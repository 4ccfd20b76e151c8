"""Where teams already look: a study's trials in an MLflow tracking server (`--mlflow`) and its
per-cell Optuna studies in a shared database (`--optuna-storage`).

Plain Python on the driver (MLflow's client, Optuna's storage API, SQLAlchemy): no Ray here;
`tuner.study` wires them into Tune's loop. Neither may stop a study: a server that goes away
mid-study is said once, and the study goes on writing its own files.
"""
