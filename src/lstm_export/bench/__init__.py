"""Bench stage: latency and accuracy parity of every backend against eager PyTorch, in one run."""
