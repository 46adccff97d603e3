"""Experiments: one file per experiment, each with `get_config(variant)` and `run(cfg, out_dir)`
(the protocol is in `alignlab/experiment.py`). Run one with `alignlab run <name>`."""
