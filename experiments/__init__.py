"""Experiment configs: one file per study, shared defaults in `common`."""
