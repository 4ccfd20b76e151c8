"""Where a study's search lost accuracy: read a finished study's trial table and count, per
batch size, (1) search trials ASHA stopped at a rung inside their own warmup (their lr had not
reached its peak when they were compared), (2) trials whose validation accuracy fell by more
than `--spike` between two evaluations (a loss spike: at high lr a single seed can lose tens of
points late in training), and (3) the cell's best search trial against its confirmation runs
(the same configuration, fresh seeds).

    python bench/study_anatomy.py studies/NAME [--spike 0.2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from tuner.store.table import collect_trials  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study_dir")
    p.add_argument("--spike", type=float, default=0.2, help="a fall in val_acc (fraction)")
    args = p.parse_args()
    table = collect_trials(args.study_dir).dropna(subset=["optimizer_steps"])
    rows = []
    for batch, group in table.groupby("batch_size"):
        per_trial = group.sort_values("optimizer_steps").groupby("trial_id")
        last = per_trial.tail(1).set_index("trial_id")
        search = last[last["phase"] == "search"]
        stopped = search[search["outcome"] == "stopped"]
        in_warmup = (stopped["optimizer_steps"] <= stopped["warmup_steps"]).sum()
        falls = per_trial["val_acc"].apply(lambda v: (v.cummax() - v).max())
        spiked = last.assign(fall=falls)
        done = search[search["outcome"] == "completed"]
        best = done["val_acc"].max() if len(done) else float("nan")
        confirm = last[last["phase"] == "confirm"]["val_acc"]
        rows.append(
            {
                "batch": batch,
                "search": len(search),
                "stopped": len(stopped),
                "stopped_in_warmup": int(in_warmup),
                "spiked_trials": int((spiked["fall"] > args.spike).sum()),
                "trials": len(last),
                "best_search": round(best, 3),
                "confirmed": " ".join(f"{v:.3f}" for v in confirm),
            }
        )
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
