"""The branch ladder on a noisy quadratic (tuner.analysis.simulate.NoisyQuadratic), against
the answer its expected dynamics give: `python bench/nqm_branch_probe.py [DIMS] [SEEDS] [TOL]`.

Plain SGD at batch 1 from theta = 3 with lr 0.5 / (1 + t / 200); at 5 checkpoints, branches at
k = 1 ... 256 for a window of 256 examples, lrs k x {0.5, 1, 2} x the base lr (linear rule and
its search), losses relative to the checkpoint's expected k = 1 end. The "true" local critical
batch walks the expected losses (exact for this model); the measured one walks the seeds'.
"""

import sys

import numpy as np

from trainables.metrics import get_metric
from tuner.analysis.branch import measure
from tuner.analysis.simulate import nqm_expected_critical, nqm_runs

dims = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
seeds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
tolerance = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
rng = np.random.default_rng(0)
for fraction, truth, runs, _, _ in nqm_runs(dims, seeds, rng):
    expected = nqm_expected_critical(truth, tolerance)
    point = measure(runs, 1, tolerance, metric=get_metric("loss"))[0]
    print(
        f"{fraction:.2f}: true {expected}, measured {point.batch} ({point.low}-{point.high}"
        f"{'+' if point.censored else ''}), expected ends {[round(v, 3) for v in truth]}"
    )
