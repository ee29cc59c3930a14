"""Measuring and regression tracking: the process set-up, thread budget and allocator every timed
process runs under, timing statistics, pytest-benchmark records and fingerprints, the gate's
judgement and the history of main."""
