"""Tests of the jitted kernels in zipjax.ops."""
