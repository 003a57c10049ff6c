"""The method layer: stages of Zip built from the kernels in `zipjax.ops`."""
