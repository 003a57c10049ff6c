"""Tests of the method layer in zipjax.pipeline."""
