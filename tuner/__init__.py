"""The study driver, its CLI (`python -m tuner.search`) and the analysis (`python -m tuner.report`).

Only `tuner.searcher`, `tuner.scheduler`, `tuner.driver`, `tuner.callbacks` and `tuner.study`
import Ray; the spec, outcomes, results table and analysis are plain Python.
"""
