"""Exceptions with messages that name the offending file, key or input."""


class ZipjaxError(Exception):
  """Base class of zipjax's own errors."""


class CheckpointError(ZipjaxError, ValueError):
  """A checkpoint file is unreadable, of the wrong family, or does not match the model."""


class InputError(ZipjaxError, ValueError):
  """Bad user input: an image, a class list, pixel arrays of the wrong shape."""
