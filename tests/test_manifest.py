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


def test_sam2_entries():
  """The four sam2.1 checkpoints: official URLs, Hub repositories facebook/sam2.1-hiera-*, arch a SAM2_SIZES key,
  sha256 unverified (null, never guessed)."""
  from zipjax.models.sam2.sam2 import SAM2_SIZES  # pylint: disable=import-outside-toplevel
  entries = json.load(open(MANIFEST))["checkpoints"]
  sam2 = [e for e in entries if e["family"] == "sam2"]
  assert {e["arch"] for e in sam2} == set(SAM2_SIZES)
  for e in sam2:
    assert e["name"] == f"sam2.1_hiera_{e['arch']}" and e["file"] == e["name"] + ".pt"
    assert e["url"] == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{e['file']}"
    assert e["sha256"] is None
    assert e["hub"] == [{"repo": "facebook/sam2.1-hiera-" + e["arch"].replace("_", "-"), "file": e["file"],
                         "sha256": None}]
