"""tpu/mount.sh, tpu/train.sh, tpu/self_train.sh --dry-run: the exact commands for a v4-32 and a v5e-16 slice (as
text), the device arithmetic behind --per-device-batch, and argument errors."""
import os

import pytest

from tests.tpu.run_script import lines, sh

B = "/mnt/zipjax"
SELF_ARGS = ["--config", "configs/selftrain_vit_b16.py", "--pseudo-json", f"{B}/runs/zip_train2017/annotations.json",
             "--images-root", f"{B}/coco/train2017", "--gt-json", f"{B}/coco/instances_train2017.json",
             "--workdir", f"{B}/runs/selftrain"]
TRAIN_ARGS = ["--config", "configs/train_vit_b16.py", "--train-json", f"{B}/coco/instances_train2017.json",
              "--images-root", f"{B}/coco/train2017", "--workdir", f"{B}/runs/finetune 10%",
              "--config.data.fraction=0.1", f"--config.init_workdir={B}/runs/selftrain/round_2"]
SSH = "+ gcloud compute tpus tpu-vm ssh {name} --zone={zone} --worker=all '--command=cd ~/zipjax 2>/dev/null || cd ~; "


def test_self_train_on_v4_32():
  r = sh("self_train.sh", "--name", "st-v4", "--type", "v4-32", "--per-device-batch", "4", "--dry-run", "--",
         *SELF_ARGS)
  assert lines(r) == [
      "# v4-32: 4 worker(s), 16 JAX devices; global batch 64 = 4 per device",
      SSH.format(name="st-v4", zone="us-central2-b") + "python3 -m zipjax self-train --config "
      f"configs/selftrain_vit_b16.py --pseudo-json {B}/runs/zip_train2017/annotations.json --images-root "
      f"{B}/coco/train2017 --gt-json {B}/coco/instances_train2017.json --workdir {B}/runs/selftrain "
      "--config.distributed=True --config.batch_size=64'"]


def test_self_train_on_v5e_16():
  r = sh("self_train.sh", "--name", "st-v5e", "--zone", "us-west4-a", "--project", "p", "--type", "v5e-16",
         "--per-device-batch", "2", "--dry-run", "--", *SELF_ARGS)
  assert lines(r) == [
      "# v5e-16: 4 worker(s), 16 JAX devices; global batch 32 = 2 per device",
      "+ gcloud compute tpus tpu-vm ssh st-v5e --zone=us-west4-a --project=p --worker=all '--command=cd ~/zipjax "
      "2>/dev/null || cd ~; python3 -m zipjax self-train --config configs/selftrain_vit_b16.py --pseudo-json "
      f"{B}/runs/zip_train2017/annotations.json --images-root {B}/coco/train2017 --gt-json "
      f"{B}/coco/instances_train2017.json --workdir {B}/runs/selftrain --config.distributed=True "
      "--config.batch_size=32'"]


@pytest.mark.parametrize("slice_type,expect", [
    ("v4-32", "# v4-32: 4 worker(s), 16 JAX devices; the config's batch_size must be a multiple of 16"),
    ("v5litepod-16",
     "# v5litepod-16: 4 worker(s), 16 JAX devices; the config's batch_size must be a multiple of 16"),
    ("v4-8", "# v4-8: 1 worker(s), 4 JAX devices; the config's batch_size must be a multiple of 4"),
    ("v5e-8", "# v5e-8: 1 worker(s), 8 JAX devices; the config's batch_size must be a multiple of 8"),
    ("v5p-128", "# v5p-128: 16 worker(s), 64 JAX devices; the config's batch_size must be a multiple of 64"),
    ("v3-32", "# v3-32: 4 worker(s), 32 JAX devices; the config's batch_size must be a multiple of 32"),
])
def test_train_fine_tuning_from_a_round(slice_type, expect):
  r = sh("train.sh", "--name", "ft", "--type", slice_type, "--dry-run", "--", *TRAIN_ARGS)
  assert lines(r) == [
      expect,
      SSH.format(name="ft", zone="us-central2-b") + "python3 -m zipjax train --config configs/train_vit_b16.py "
      f"--train-json {B}/coco/instances_train2017.json --images-root {B}/coco/train2017 --workdir "
      f"'\\''{B}/runs/finetune 10%'\\'' --config.data.fraction=0.1 "
      f"--config.init_workdir={B}/runs/selftrain/round_2 --config.distributed=True'"]


def test_type_from_environment():
  r = sh("train.sh", "--dry-run", "--", "--workdir", "/mnt/w", env={"ZIPJAX_TPU_TYPE": "v5e-16",
                                                                     "ZIPJAX_TPU_NAME": "envpod"})
  assert lines(r)[0].startswith("# v5e-16: 4 worker(s), 16 JAX devices")
  assert "ssh envpod " in lines(r)[1]


def test_mount():
  assert lines(sh("mount.sh", "--bucket", "gs://my-bucket/", "--name", "pod", "--dry-run")) == [
      "+ gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --worker=all '--command=command -v gcsfuse "
      ">/dev/null || { echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] "
      "https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main\" | sudo tee "
      "/etc/apt/sources.list.d/gcsfuse.list >/dev/null && curl -s "
      "https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && sudo apt-get update -q && sudo apt-get install -y "
      "-q gcsfuse; } && sudo mkdir -p /mnt/zipjax && sudo chown $(id -u):$(id -g) /mnt/zipjax && { mountpoint -q "
      "/mnt/zipjax || gcsfuse --implicit-dirs --rename-dir-limit=1000000 my-bucket /mnt/zipjax; } && echo mounted "
      "gs://my-bucket on /mnt/zipjax'"]
  r = sh("mount.sh", "--bucket", "gs://b", "--mount-point", "/data/b", "--dry-run")
  assert "gcsfuse --implicit-dirs --rename-dir-limit=1000000 b /data/b;" in lines(r)[0]


@pytest.mark.parametrize("script,args,msg", [
    ("train.sh", ["--dry-run"], "no zipjax train arguments"),
    ("self_train.sh", ["--dry-run", "--", "--config", "c.py"], "needs --workdir"),
    ("train.sh", ["--dry-run", "--config", "c.py"], "go after --"),
    ("train.sh", ["--dry-run", "--type", "v9-8", "--", "--workdir", "/w"], "unknown accelerator type v9-8"),
    ("train.sh", ["--dry-run", "--type", "v4", "--", "--workdir", "/w"], "unknown accelerator type v4"),
    ("train.sh", ["--dry-run", "--per-device-batch", "0", "--", "--workdir", "/w"], "positive integer"),
    ("self_train.sh", ["--dry-run", "--", "--workdir", "gs://b/st"], "mount the bucket with tpu/mount.sh"),
    ("train.sh", ["--dry-run", "--", "--workdir", "/w", "--train-json=gs://b/a.json"], "tpu/mount.sh"),
    ("mount.sh", ["--dry-run"], "--bucket gs://BUCKET is required"),
    ("mount.sh", ["--dry-run", "--bucket", "gs://b/folder"], "--bucket gs://BUCKET is required"),
    ("mount.sh", ["--dry-run", "--bucket", "gs://b", "--mount-point", "rel/dir"], "absolute path"),
])
def test_argument_errors(script, args, msg):
  r = sh(script, *args)
  assert r.returncode == 2 and msg in r.stderr and not r.stdout


def test_dry_run_runs_nothing(tmp_path):
  p = tmp_path / "gcloud"
  p.write_text(f"#!/bin/sh\necho gcloud >> {tmp_path}/ran\n")
  p.chmod(0o755)
  env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
  for script, args in (("mount.sh", ["--bucket", "gs://b"]), ("train.sh", ["--", "--workdir", "/w"]),
                       ("self_train.sh", ["--", "--workdir", "/w"])):
    assert sh(script, "--dry-run", *args, env=env).returncode == 0
  assert not (tmp_path / "ran").exists()
  r = sh("self_train.sh", "--", "--workdir", "/w", env=env)  # without --dry-run the command really runs
  assert r.returncode == 0 and (tmp_path / "ran").read_text() == "gcloud\n"
