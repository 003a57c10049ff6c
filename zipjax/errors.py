"""Exceptions with messages that name the offending file, key or input."""


class ZipjaxError(Exception):
  """Base class of zipjax's own errors."""


class CheckpointError(ZipjaxError, ValueError):
  """A checkpoint file is unreadable, of the wrong family, or does not match the model."""


class InputError(ZipjaxError, ValueError):
  """Bad user input: an image, a class list, pixel arrays of the wrong shape."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's files cannot be read back (truncated, missing, garbled), as opposed to a checkpoint that is
  intact but of another model."""
