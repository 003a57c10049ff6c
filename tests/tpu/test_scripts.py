"""tpu/*.sh --dry-run: the exact gcloud / git commands each script would run (as text), and argument errors."""
import os

import pytest

from tests.tpu.run_script import ROOT, lines, sh

METADATA = ("$(curl -s -H Metadata-Flavor:Google "
            "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)")


def test_create():
  assert lines(sh("create.sh", "--dry-run")) == [
      "+ gcloud compute tpus tpu-vm create zipjax-label --zone=us-central2-b --accelerator-type=v4-32 "
      "--version=tpu-ubuntu2204-base"]
  assert lines(sh("create.sh", "--name", "n1", "--zone", "europe-west4-a", "--project", "p", "--type", "v5litepod-16",
                  "--version", "v2-alpha-tpuv5-lite", "--spot", "--dry-run")) == [
      "+ gcloud compute tpus tpu-vm create n1 --zone=europe-west4-a --project=p --accelerator-type=v5litepod-16 "
      "--version=v2-alpha-tpuv5-lite --spot"]
  env = {"ZIPJAX_TPU_NAME": "from-env", "ZIPJAX_TPU_ZONE": "z", "ZIPJAX_TPU_TYPE": "v4-8"}
  assert lines(sh("create.sh", "--dry-run", env=env)) == [
      "+ gcloud compute tpus tpu-vm create from-env --zone=z --accelerator-type=v4-8 --version=tpu-ubuntu2204-base"]


def test_install():
  assert lines(sh("install.sh", "--dry-run")) == [
      f"+ git -C {ROOT} archive --format=tar.gz --prefix=zipjax/ -o /tmp/zipjax-src.tar.gz HEAD",
      "+ gcloud compute tpus tpu-vm scp /tmp/zipjax-src.tar.gz zipjax-label:/tmp/zipjax-src.tar.gz "
      "--zone=us-central2-b --worker=all",
      "+ gcloud compute tpus tpu-vm ssh zipjax-label --zone=us-central2-b --worker=all '--command=rm -rf ~/zipjax "
      "&& tar -xzf /tmp/zipjax-src.tar.gz -C ~ && cd ~ && python3 -m pip install -U '\\''jax[tpu]'\\'' gcsfs "
      "'\\''./zipjax'\\'' && python3 -m zipjax --help >/dev/null && echo zipjax ok'"]
  assert lines(sh("install.sh", "--source", "git+https://example.org/zipjax@v1", "--dry-run")) == [
      "+ gcloud compute tpus tpu-vm ssh zipjax-label --zone=us-central2-b --worker=all '--command=python3 -m pip "
      "install -U '\\''jax[tpu]'\\'' gcsfs '\\''git+https://example.org/zipjax@v1'\\'' && python3 -m zipjax --help "
      ">/dev/null && echo zipjax ok'"]


def test_label_runs_on_every_worker_with_a_coordinator():
  r = sh("label.sh", "--name", "pod", "--dry-run", "--", "tfds:coco/2017:train", "--data-dir", "gs://b/tfds",
         "--classes-file", "gs://b/coco 80.txt", "--out", "gs://b/runs/train2017", "--config",
         "configs/label_coco.py")
  assert lines(r) == [
      "+ gcloud compute tpus tpu-vm describe pod --zone=us-central2-b '--format=value(networkEndpoints[].ipAddress)'",
      "# (dry run: WORKER0_IP and NUM_WORKERS stand for what this command returns)",
      "+ gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --worker=all '--command=cd ~/zipjax 2>/dev/null "
      "|| cd ~; ZIPJAX_COORDINATOR=WORKER0_IP:8476 ZIPJAX_NUM_PROCESSES=NUM_WORKERS ZIPJAX_PROCESS_ID="
      f"{METADATA} python3 -m zipjax label tfds:coco/2017:train --data-dir gs://b/tfds --classes-file "
      "'\\''gs://b/coco 80.txt'\\'' --out gs://b/runs/train2017 --config configs/label_coco.py'"]


def test_copy_and_delete():
  assert lines(sh("copy.sh", "--out", "gs://b/runs/x/", "--to", "results", "--dry-run")) == [
      "+ mkdir -p results",
      "+ gcloud storage cp gs://b/runs/x/annotations.json gs://b/runs/x/errors.json gs://b/runs/x/run.json results"]
  assert lines(sh("copy.sh", "--out", "gs://b/runs/x", "--to", "r", "--all", "--dry-run"))[1] == (
      "+ gcloud storage cp -r gs://b/runs/x r")
  assert lines(sh("delete.sh", "--name", "pod", "--project", "p", "--dry-run")) == [
      "+ gcloud compute tpus tpu-vm delete pod --zone=us-central2-b --project=p --quiet"]


@pytest.mark.parametrize("script,args,msg", [
    ("create.sh", ["--bogus"], "unknown argument --bogus"),
    ("label.sh", ["--dry-run"], "no zipjax label arguments"),
    ("label.sh", ["--dry-run", "--", "imgs/"], "needs --out"),
    ("label.sh", ["--dry-run", "imgs/"], "go after --"),
    ("copy.sh", ["--dry-run", "--to", "x"], "--out gs://... is required"),
    ("delete.sh", ["--dry-run", "extra"], "unknown argument extra"),
])
def test_argument_errors(script, args, msg):
  r = sh(script, *args)
  assert r.returncode == 2 and msg in r.stderr and not r.stdout


def test_dry_run_runs_nothing(tmp_path):
  """With --dry-run nothing is executed: a fake `gcloud` / `git` first on PATH would leave a trace."""
  for tool in ("gcloud", "git", "mkdir"):
    p = tmp_path / tool
    p.write_text(f"#!/bin/sh\necho {tool} >> {tmp_path}/ran\n")
    p.chmod(0o755)
  env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
  for script, args in (("create.sh", []), ("install.sh", []), ("label.sh", ["--", "x", "--out", "gs://b/o"]),
                       ("copy.sh", ["--out", "gs://b/o", "--to", str(tmp_path / "r")]), ("delete.sh", [])):
    assert sh(script, "--dry-run", *args, env=env).returncode == 0
  assert not (tmp_path / "ran").exists()
  r = sh("delete.sh", env=env)  # without --dry-run the command really runs
  assert r.returncode == 0 and (tmp_path / "ran").read_text() == "gcloud\n"
