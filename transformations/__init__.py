"""Upstream data stages: synthetic events, the validation gate and the rolling feature snapshots."""
