"""`--method branch`: the local critical batch size from branched runs (tuner.branch.run)."""
