"""The checkpoint manifest names known architectures and well-formed digests."""
import json
import os
import re

from zipjax.models.clip_net import ARCHITECTURES

MANIFEST = os.path.join(os.path.dirname(__file__), "..", "checkpoints", "manifest.json")


def test_clip_entries():
  entries = json.load(open(MANIFEST))["checkpoints"]
  clip = [e for e in entries if e["family"] == "clip"]
  assert {e["arch"] for e in clip} == set(ARCHITECTURES)
  for e in clip:
    assert re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), e
    assert e["url"].endswith("/" + e["file"]) and e["sha256"] in e["url"]
