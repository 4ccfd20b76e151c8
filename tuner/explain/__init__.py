"""`python -m tuner.explain STUDY_DIR`: why large batches degrade, on a study's saved weights."""
