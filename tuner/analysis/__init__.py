"""The degradation map as pure functions over the tidy trial table (`tuner.store.table`).

No Ray and no plotting: every function takes a DataFrame (or arrays) and returns one, so the
whole analysis is tested in milliseconds on hand-built tables. `frontier.degradation_map` runs
all of it; `tuner.report` writes and draws the result.

Modules: `trials` (one row per trial, outcomes), `accuracy` (best accuracy, baseline,
degradation), `steps` (steps to target), `critical` (critical batch size), `hparams` (best
hyperparameters, search-range edges), `throughput`, `frontier` (the whole map).
"""
