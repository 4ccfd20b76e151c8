"""What runs on the workers: workloads, models, data, optimisers, the training loop.

Nothing here imports Ray except `trainables.ray_worker`, the adapter into Ray Train.
"""
