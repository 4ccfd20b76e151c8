"""The degradation map as files: verdict (`verdict`), markdown and JSON (`render`), figures
(`figures`), the study-level TensorBoard run (`tensorboard`), the writer (`write`), a fetch from
an object store (`fetch`) and the CLI (`cli`, run as `python -m tuner.report`). No Ray."""
