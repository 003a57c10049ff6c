"""What the commands share (`zipjax segment`, `label`, `detect`, `train`): config files and `--config.KEY=VALUE`
overrides, class names from `--classes` / `--classes-file`, and the persistent XLA compilation cache.

- `load_config_file(path)`: `get_config()` of a `configs/*.py` file, with one clear `InputError` for every way it
  can fail (missing, not a `.py` file, fails to run, no `get_config()`, not a ConfigDict).
- `apply_overrides(config, items)`: `--config.a.b=value` items onto existing fields through ml_collections'
  `config_flags` (values parsed by the field's type: booleans, ints, floats, strings, tuples; Python literals
  for lists).
- `class_names(args)`: the class list of `--classes a,b` or `--classes-file F` (local file or bucket URL; one
  name a line, '#' comments), checked by `zipjax.io.images.parse_class_names`.
- `enable_compilation_cache()`: XLA executables persisted under the zipjax cache.
Each command validates its config after the overrides with `zipjax.config_check` (its family's rule table).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re

from absl import flags as absl_flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from zipjax.errors import InputError


# ------------------------------------------------------------------------------------------------- config
def load_config_file(path: str):
  """`get_config()` of a Python config file (a `.py` file defining `get_config()` -> ml_collections.ConfigDict).

  Raises:
    InputError: the file is missing, not a regular `.py` file, fails to run, has no `get_config()`, or that
      returns something other than a ConfigDict.
  """
  import ml_collections  # pylint: disable=import-outside-toplevel
  where = f"--config {path}"
  if not os.path.exists(path):
    raise InputError(f"{where}: file not found")
  if not os.path.isfile(path):
    raise InputError(f"{where}: not a regular file")
  if not path.endswith(".py"):
    raise InputError(f"{where}: not a Python config file (expected a .py file that defines get_config(), "
                     "e.g. configs/smoke.py; or use --preset)")
  spec = importlib.util.spec_from_file_location(f"_zipjax_config_{abs(hash(path))}", path)
  if spec is None or spec.loader is None:
    raise InputError(f"{where}: cannot be loaded as a Python module")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f"{where}: the file fails to run ({type(e).__name__}: {e})") from e
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise InputError(f"{where}: defines no get_config() function")
  try:
    config = get_config()
  except Exception as e:  # pylint: disable=broad-except
    locked = locked_key_error(e)
    raise InputError(f"{where}: get_config() failed: {locked}" if locked else
                     f"{where}: get_config() failed ({type(e).__name__}: {e})") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError(f"{where}: get_config() returned a {type(config).__name__}, expected an "
                     "ml_collections.ConfigDict")
  return config.unlock().lock()  # every group, also those the file added: a field can be changed, not added


_LOCKED = re.compile(r'Key "([^"]+)" does not exist and cannot be added since the config is locked')
_NEAREST = re.compile(r'Did you mean "([^"]+)" instead of')


def locked_key_error(e: Exception) -> str | None:
  """One line for ml_collections' error on setting a field a locked config does not have (None for others)."""
  m = _LOCKED.search(str(e)) if isinstance(e, AttributeError) else None
  if m is None:
    return None
  near = _NEAREST.search(str(e))
  return (f"no config field {m.group(1)!r}" + (f" (did you mean {near.group(1)!r}?)" if near else "")
          + "; configs are locked: a field can be changed, not added (add a group inside `with config.unlocked():`)")


class _LiteralOrText(absl_flags.ArgumentParser):
  """Parses the fields ml_collections has no parser for (lists, and fields that are None in the config): a Python
  literal, else the text as given."""

  def parse(self, argument):
    try:
      return ast.literal_eval(argument)
    except (ValueError, SyntaxError):
      return argument


for _kind in (list, type(None)):
  config_flags.register_flag_parser_for_type(_kind, _LiteralOrText())


def _items(overrides: list[str]) -> list[tuple[str, str]]:
  """`--config.a.b=value` / `--config.a.b value` items as (path, value) pairs."""
  items, i = [], 0
  while i < len(overrides):
    arg = overrides[i]
    if not arg.startswith("--config."):
      raise InputError(f"unrecognised argument {arg!r}")
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(overrides):
        raise InputError(f"--config.{key}: missing value")
      value = overrides[i + 1]
      i += 1
    items.append((key, value))
    i += 1
  return items


def apply_overrides(config, overrides: list[str]):
  """Applies `--config.a.b=value` / `--config.a.b value` items to `config`'s existing fields, in order, through
  ml_collections' own override machinery (`config_flags`: each value parsed by the field's type: absl's
  booleans, ints, floats and strings, ml_collections' tuples; a Python literal for lists). Returns `config`."""
  for key, value in _items(overrides):
    try:
      old = config_path.get_value(key, config)
    except (AttributeError, KeyError, IndexError, ValueError):
      raise InputError(f"--config.{key}: no such config field") from None
    if hasattr(old, "keys"):
      raise InputError(f"--config.{key} is a group of fields; set its members")
    argv = ["zipjax", f"--config.{key}={value}"]
    flag_values = absl_flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, sys_argv=argv, lock_config=False)
    try:
      flag_values(argv)
    except absl_flags.Error as e:
      kind = "a boolean" if isinstance(old, bool) else type(old).__name__
      raise InputError(f"--config.{key}: expected {kind}, got {value!r} ({_last_part(e)})") from None
  return config


def _last_part(e: Exception) -> str:
  return str(e).splitlines()[0].split(": ", 1)[-1][:120] if str(e) else type(e).__name__


def class_names(args) -> list[str]:
  """The class names of `--classes` or `--classes-file` (a local file or a bucket URL)."""
  from zipjax.io import images as images_io  # pylint: disable=import-outside-toplevel
  if getattr(args, "classes_file", None):
    from zipjax.io import fs  # pylint: disable=import-outside-toplevel
    try:
      lines = fs.read_bytes(args.classes_file).decode("utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as e:
      raise InputError(f"--classes-file {args.classes_file}: cannot read ({e})") from e
    return images_io.parse_class_names(file_lines=lines)
  if getattr(args, "classes", None) is None:
    raise InputError("one of --classes or --classes-file is required")
  return images_io.parse_class_names(args.classes)


# ------------------------------------------------------------------------------------------------- runtime
def enable_compilation_cache() -> str | None:
  """Persists XLA executables in <cache>/xla (ZIPJAX_XLA_CACHE=0 turns it off), so a second run with the same
  models and image sizes skips compilation (most of a cold start on CPU)."""
  import jax  # pylint: disable=import-outside-toplevel

  from zipjax.io.fs import cache_dir  # pylint: disable=import-outside-toplevel
  if os.environ.get("ZIPJAX_XLA_CACHE", "1") == "0":
    return None
  path = os.path.join(cache_dir(), "xla")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None  # a read-only cache is no reason to fail a run
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


__all__ = ["load_config_file", "apply_overrides", "class_names", "enable_compilation_cache"]
