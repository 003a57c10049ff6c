"""Runs a tpu/*.sh script (with no ZIPJAX_TPU_* variables from the caller's environment) for the dry-run tests."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("ZIPJAX_TPU_")}


def sh(script, *args, env=None):
  return subprocess.run(["bash", os.path.join(ROOT, "tpu", script), *args], capture_output=True, text=True,
                        env=dict(ENV, **(env or {})), timeout=60)


def lines(r):
  assert r.returncode == 0, r.stderr
  return r.stdout.splitlines()
