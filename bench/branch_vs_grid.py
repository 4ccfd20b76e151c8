"""The branched measurement against the grid (issue 21 item 3): one table row per pair of a
grid study and a branch study of the same workload, both read from their own files, costs from
the product's own accounting.

    python -m tuner.search simple_cnn --dataset digits --rules sqrt --name digits-grid
    python -m tuner.search simple_cnn --dataset digits --rules sqrt --method branch \\
        --verify-schedule --name digits-branch
    python bench/branch_vs_grid.py studies/digits-grid studies/digits-branch [GRID BRANCH ...]
"""

import json
import sys
from pathlib import Path


def row(grid: Path, branch: Path) -> str:
    g = json.loads((grid / "frontier.json").read_text())
    b = json.loads((branch / "branch.json").read_text())
    crit, g_cost, b_cost = g["critical_batch"], g["cost"], b["cost"]
    points = ", ".join(
        f"{p['checkpoint']:.0%}: {p['local_critical']} ({p['low']}-{p['high']}"
        f"{'+' if p['censored'] else ''})"
        for p in b["points"]
    )
    constant = b["constant_batch"]
    aim = constant["batch"]
    interval = f"{constant['low']}-{constant['high']}{'+' if constant['censored'] else ''}"
    share = b_cost["device_hours"] / g_cost["device_hours"]
    return (
        f"| {b['workload']} on {b['dataset']} | {crit['b_crit']:.1f} ({crit['ci_low']:.1f}-"
        f"{crit['ci_high']:.1f}) | {g_cost['device_hours'] * 60:.2f} {g_cost['device']}-min | "
        f"{points} | {aim} ({interval}; x{aim / crit['b_crit']:.2f}) | "
        f"{b_cost['device_hours'] * 3600:.1f} {b_cost['device']}-s ({share:.1%}) |"
    )


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]]
    print(
        "| workload | grid B_crit (95% CI) | grid device time | branched local critical batch "
        "per checkpoint (interval) | branched, for a constant batch (interval; x grid) | "
        "branched device time "
        "(share of grid) |"
    )
    print("|---|---|---|---|---|---|")
    for grid, branch in zip(paths[::2], paths[1::2], strict=True):
        print(row(grid, branch))
