"""The Ray Tune / Ray Train wiring of a study: the session (`session`), the Tune experiment
(`experiment`), one trial's driver (`trial`), the searcher, the scheduler and the callbacks.

With `tuner.cluster.connect`, `tuner.cluster.config` and `trainables/ray_worker.py`, the only
code that imports Ray.
"""
