"""Jitted kernels with static shapes."""
