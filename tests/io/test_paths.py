"""zipjax.io.paths: names that are not valid UTF-8 are stored as strict-UTF-8 JSON text with `\\xNN` escapes
and a flag, decode back to the original bytes, and print under a strict UTF-8 stdout."""
import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from zipjax.io.paths import display, json_path, path_bytes


def strict_json_strings(obj):
  """Every string of a parsed JSON document, encoded strictly (a lone surrogate raises)."""
  if isinstance(obj, dict):
    for k, v in obj.items():
      k.encode("utf-8")
      strict_json_strings(v)
  elif isinstance(obj, list):
    for v in obj:
      strict_json_strings(v)
  elif isinstance(obj, str):
    obj.encode("utf-8")


def test_examples():
  assert json_path("photos/Äpfel.png") == ("photos/Äpfel.png", False)
  bad = os.fsdecode(b"caf\xe9\\x41.png")  # an invalid byte and a literal backslash
  assert json_path(bad) == ("caf\\xe9\\x5cx41.png", True)
  assert path_bytes(*json_path(bad)) == b"caf\xe9\\x41.png"
  assert path_bytes("a\\x41.png", False) == b"a\\x41.png"  # without the flag, backslashes are literal
  assert display(bad) == "caf\\xe9\\x41.png"
  display(bad).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b))
def test_round_trip_any_bytes(raw):
  text, escaped = json_path(os.fsdecode(raw))
  text.encode("utf-8")  # strict
  assert escaped == (raw != raw.decode("utf-8", "replace").encode("utf-8"))
  assert path_bytes(text, escaped) == raw
  assert json.loads(json.dumps(text, ensure_ascii=False)) == text

