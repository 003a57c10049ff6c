"""File names that are not valid UTF-8: how zipjax prints them and stores them in JSON.

On Linux a file name is bytes; Python hands names that are not valid UTF-8 over as `str` with "surrogate
escapes" (each undecodable byte 0xNN becomes the lone surrogate U+DCNN). Those cannot be printed to a strict
UTF-8 stream, and in JSON they become `\\udcNN` escapes that most non-Python readers reject (a lone surrogate
is not a Unicode character). zipjax therefore stores such a name as text with the offending bytes escaped:

- `json_path(path) -> (text, escaped)`: a name that is valid UTF-8 is stored unchanged (`escaped` False).
  Otherwise every byte that is not part of a valid UTF-8 sequence, and every backslash, is written as the
  four characters `\\xNN` (two lowercase hex digits), the rest as its UTF-8 text, and `escaped` is True. The
  JSON record then carries a flag next to the name (`"path_escaped": true` in errors.json,
  `"file_name_escaped": true` on an image of annotations.json).
- `path_bytes(text, escaped) -> bytes`: the original file name (any language: replace each `\\xNN` with
  the byte 0xNN, encode the rest as UTF-8).
- `display(text)`: a printable form for messages (the same escapes; never raises).
"""
from __future__ import annotations

import os
import re

_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def is_utf8(path) -> bool:
  """Whether the name is valid UTF-8 (no surrogate escapes)."""
  try:
    os.fspath(path).encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def _escape(raw: bytes) -> str:
  return "\\x5c".join(part.decode("utf-8", "backslashreplace") for part in raw.split(b"\\"))


def json_path(path) -> tuple[str, bool]:
  """(text for JSON, escaped); see the module docstring."""
  path = os.fspath(path)
  if isinstance(path, bytes):
    raw = path
  elif is_utf8(path):
    return path, False
  else:
    raw = os.fsencode(path)
  try:
    return raw.decode("utf-8"), False
  except UnicodeDecodeError:
    return _escape(raw), True


def path_bytes(text: str, escaped: bool) -> bytes:
  """The file name's bytes from its JSON form (inverse of `json_path`)."""
  if not escaped:
    return text.encode("utf-8")
  out, pos = bytearray(), 0
  for m in _ESCAPE.finditer(text):
    out += text[pos:m.start()].encode("utf-8")
    out.append(int(m.group(1), 16))
    pos = m.end()
  out += text[pos:].encode("utf-8")
  return bytes(out)


def display(text) -> str:
  """A printable form of a name or message: surrogate-escaped bytes become `\\xNN`; never raises."""
  text = os.fspath(text) if not isinstance(text, str) else text
  if isinstance(text, bytes):
    return text.decode("utf-8", "backslashreplace")
  if is_utf8(text):
    return text
  return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") if _only_escapes(text) \
      else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _only_escapes(text: str) -> bool:
  """Whether every lone surrogate in `text` is a surrogate escape of a byte (U+DC80..U+DCFF)."""
  return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


__all__ = ["is_utf8", "json_path", "path_bytes", "display"]
