"""Pure Flax modules (no I/O). Submodule names mirror the PyTorch state dicts they are converted from."""
