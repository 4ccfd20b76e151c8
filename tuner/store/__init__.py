"""Where a study's files live: names, local and object-store storage, Optuna's database, and the
tidy trial table. Plain Python, no Ray."""
