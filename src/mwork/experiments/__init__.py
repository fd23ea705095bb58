"""Experiments built on the toolkit: deactivation grids, and enhancement (tuning only a language's neurons) with its baselines."""
