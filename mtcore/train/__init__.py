"""A training run's life: its options, the preparation every framework shares, the trainer, the
launcher, the entry points ``train`` and ``compare``, and the report."""
