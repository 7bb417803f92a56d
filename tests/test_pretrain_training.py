"""Training at scale, shown on a tiny CPU set: DDP through torchrun (gloo) equals one process with the same
global batch; resume state outside the outputs; a SIGKILL mid-epoch loses nothing but time; precision;
progress lines.

Every comparison runs each side in a fresh subprocess with one thread, so that both sides do the same
arithmetic in the same order (deterministic CPU settings, no dropout, fp32).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from toy_ecg import toy_signals

from supreme_ecg.model import load_checkpoint
from supreme_ecg.preprocess import signal_array
from supreme_ecg.pretrain import CHECKPOINT, PretrainConfig, pretrain, resolve_precision
from supreme_ecg.pretrain.loop import micro_batch
from supreme_ecg.pretrain.outputs import STEP_STATE

LABELS, FREQS = ["afib", "avb", "ste"], [3.0, 7.0, 13.0]
N_TRAIN, N_VAL, LENGTH, FS = 96, 32, 500, 250
# 96 train records / global batch 16 = 6 steps per epoch
CFG = PretrainConfig(epochs=2, batch_size=16, lr=3e-3, warmup_steps=2, width=16, n_heads=2, dropout=0.0, seed=3,
                     threads=1, device="cpu", query_members=False, pos_weight=True, checkpoint_every_steps=0,
                     log_every_steps=2, downsample=1)  # the CPU on any machine: DDP with gloo, deterministic
# One process of the comparisons: the toy set, a hashed text encoder (no model download), pretrain().
DRIVER = '''
import hashlib, json, sys, time
from pathlib import Path
import torch
from supreme_ecg.pretrain import PretrainConfig, pretrain

class HashEncoder:
    name, pooling = "hash", "mean"
    def encode(self, texts):
        rows = [torch.randn(32, generator=torch.Generator().manual_seed(
            int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big"))) for t in texts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=1)

args = json.loads(sys.argv[1])
marker = args.get("stall_marker")
def on_step(step):
    if marker and step == args["stall_step"]:
        Path(marker).write_text(str(step))
        time.sleep(600)  # killed here
result = pretrain(args["shards"], args["labels"], args["vocabulary"], args["out"],
                  PretrainConfig(**args["cfg"]), text_encoder=HashEncoder(), on_step=on_step)
print("RESULT " + json.dumps(result, default=str))
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """One shard (row groups of 32) naming its own split: 96 train, 32 val; labels.parquet; vocabulary."""
    root = tmp_path_factory.mktemp("train_toy")
    rng = np.random.default_rng(5)
    n = N_TRAIN + N_VAL
    ids = [f"r{i:03d}" for i in range(n)]
    y, x = toy_signals(rng, n, FREQS, LENGTH, FS)
    split = ["val" if i % 4 == 0 else "train" for i in range(n)]
    pq.write_table(pa.table({
        "record_id": ids, "dataset": ["toy"] * n, "split": ["train"] * n, "fs": pa.array([FS] * n, pa.int32()),
        "n_samples": pa.array([LENGTH] * n, pa.int32()), "signal": signal_array(x), "pretrain_split": split,
    }), root / "shard-0.parquet", row_group_size=32)
    pd.DataFrame({"record_id": ids, **{c: y[:, k] for k, c in enumerate(LABELS)}}).to_parquet(
        root / "labels.parquet", index=False)
    member_type = pa.list_(pa.struct([("surface_form", pa.string()), ("n_records", pa.int64())]))
    pq.write_table(pa.table({
        "label_index": pa.array(range(len(LABELS)), pa.int32()), "label": LABELS, "name": LABELS,
        "category": ["rhythm"] * len(LABELS), "n_present": (y == 1).sum(0), "n_uncertain": [0] * len(LABELS),
        "n_records": (y == 1).sum(0), "members": pa.array([[] for _ in LABELS], member_type),
    }), root / "vocabulary.parquet")
    (root / "driver.py").write_text(DRIVER)
    return {"root": root, "shards": [str(root / "shard-0.parquet")], "labels": str(root / "labels.parquet"),
            "vocabulary": str(root / "vocabulary.parquet"), "driver": str(root / "driver.py")}


def _args(toy, out: Path, cfg: PretrainConfig, **extra) -> list[str]:
    """The driver's JSON argument."""
    return [json.dumps({"shards": toy["shards"], "labels": toy["labels"], "vocabulary": toy["vocabulary"],
                        "out": str(out), "cfg": asdict(cfg), **extra})]


def _env() -> dict:
    """One thread per process; torchrun's variables of an outer run removed."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _drive(toy, out: Path, cfg: PretrainConfig, nproc: int = 1) -> dict:
    """pretrain() in a fresh process (``nproc`` > 1: under torchrun) → rank 0's summary."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run(launch + [toy["driver"]] + _args(toy, out, cfg), capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == nproc
    return next(r for r in results if r["rank"] == 0)


def _max_diff(a: Path, b: Path, key_bias: bool = True) -> float:
    """Largest absolute difference between the weights of two checkpoints.

    ``key_bias=False`` leaves out the attention's key bias (middle third of ``in_proj_bias``): softmax
    is invariant to it, so its true gradient is zero and AdamW turns float noise into steps of ±lr.
    """
    sa, sb = load_checkpoint(a)["model_state"], load_checkpoint(b)["model_state"]
    assert sa.keys() == sb.keys()
    diffs = []
    for k in sa:
        d = (sa[k].double() - sb[k].double()).abs()
        if not key_bias and k.endswith("in_proj_bias"):
            third = len(d) // 3
            d = torch.cat([d[:third], d[2 * third:]])
        if d.numel():
            diffs.append(float(d.max()))
    return max(diffs)


@pytest.mark.ddp
def test_two_processes_under_torchrun_equal_one_process_with_the_same_global_batch(toy, tmp_path):
    """2 ranks × micro-batch 8 (gloo, BatchNorm synchronised) vs 1 rank × 16: after 12 steps the same weights
    to 1e-6 (float sums in another order; measured max |Δ| ≈ 2e-7), the attention key bias aside (see
    ``_max_diff``); the same metrics to 1e-5."""
    cfg = replace(CFG, state_dir=str(tmp_path / "state"))
    one = _drive(toy, tmp_path / "one", cfg)
    two = _drive(toy, tmp_path / "two", replace(cfg, gpus=2), nproc=2)
    assert (one["world_size"], one["micro_batch"]) == (1, 16) and (two["world_size"], two["micro_batch"]) == (2, 8)
    diff = _max_diff(tmp_path / "one" / CHECKPOINT, tmp_path / "two" / CHECKPOINT, key_bias=False)
    print(f"ddp max |weight difference| = {diff:.3g}")
    assert diff <= 1e-6
    a, b = (pd.read_parquet(tmp_path / d / "metrics.parquet") for d in ("one", "two"))
    cols = ["train_loss", "val_loss", "val_macro_auc", "lr"]
    np.testing.assert_allclose(b[cols].to_numpy(), a[cols].to_numpy(), rtol=1e-5, atol=1e-6)


def test_sigkill_mid_epoch_then_resume_ends_with_the_same_weights(toy, tmp_path):
    """Step checkpoints every 4 steps; the process is SIGKILLed at step 10 (epoch 2, after the save at
    step 8); the rerun resumes at epoch 1 + 2 steps and ends bit for bit where an uninterrupted run ends."""
    cfg = replace(CFG, checkpoint_every_steps=4, state_dir=str(tmp_path / "state"))
    straight = _drive(toy, tmp_path / "straight", replace(cfg, state_dir=str(tmp_path / "state_straight")))
    marker = tmp_path / "stalled"
    proc = subprocess.Popen([sys.executable, toy["driver"]] + _args(
        toy, tmp_path / "killed", cfg, stall_marker=str(marker), stall_step=10), env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the training process did not reach step 10"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step_files = list((tmp_path / "state").glob(f"*/{STEP_STATE}"))
    assert len(step_files) == 1
    position = load_checkpoint(step_files[0])["position"]
    assert (position["epoch"], position["done"], position["step"]) == (1, 2, 8)
    resumed = _drive(toy, tmp_path / "killed", cfg)
    assert resumed["start_epoch"] == 1 and "+ 2 steps" in resumed["resume"], resumed["resume"]
    assert straight["start_epoch"] == 0
    diff = _max_diff(tmp_path / "straight" / CHECKPOINT, tmp_path / "killed" / CHECKPOINT)
    print(f"SIGKILL resume max |weight difference| = {diff:.3g}")
    assert diff == 0.0
    a, b = (pd.read_parquet(tmp_path / d / "metrics.parquet") for d in ("straight", "killed"))
    cols = ["epoch", "train_loss", "val_loss", "val_macro_auc", "lr"]
    np.testing.assert_array_equal(b[cols].to_numpy(), a[cols].to_numpy())


class _Hash:
    """A text encoder that needs no download (in-process tests)."""

    name, pooling = "hash", "mean"

    def encode(self, texts):
        """Deterministic unit vectors per text."""
        import hashlib

        return torch.nn.functional.normalize(torch.stack([torch.randn(32, generator=torch.Generator().manual_seed(
            int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big"))) for t in texts]), dim=1)


def _run(toy, out, cfg, **kw) -> dict:
    return pretrain(toy["shards"], toy["labels"], toy["vocabulary"], out, cfg, text_encoder=_Hash(), **kw)


def test_raising_epochs_continues_after_the_outputs_are_deleted(toy, tmp_path):
    """Snakemake deletes results/pretrain before a rerun: the state folder keeps the run, so epochs 2 → 3
    continues at epoch 2 and the first two rows of metrics.parquet are those of the first run."""
    import shutil

    cfg = replace(CFG, state_dir=str(tmp_path / "state"))
    first = _run(toy, tmp_path / "out", cfg)
    before = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    shutil.rmtree(tmp_path / "out")
    second = _run(toy, tmp_path / "out", replace(cfg, epochs=3, log_every_steps=5))  # runtime settings may change
    assert first["start_epoch"] == 0 and second["start_epoch"] == 2 and second["state"] == first["state"]
    after = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    assert after["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(after.iloc[:2], before)
    assert load_checkpoint(tmp_path / "out" / CHECKPOINT)["epoch"] == 3
    other = _run(toy, tmp_path / "out", replace(cfg, epochs=1, lr=1e-3))  # a setting that must match: afresh
    assert other["start_epoch"] == 0 and other["state"] != first["state"]


def test_precision_and_micro_batch():
    """auto is fp32 on the CPU (bf16 on a CUDA device with bf16); the micro-batch divides the global batch."""
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) == torch.bfloat16 and resolve_precision("fp16", cpu) == torch.float16
    assert micro_batch(replace(CFG, batch_size=256, grad_accum_steps=4), 2) == 32
    with pytest.raises(ValueError):
        PretrainConfig.from_mapping({"precision": "fp8"})


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_accumulation_train_on_cpu(toy, tmp_path, precision):
    """Autocast (bf16; fp16 with the grad scaler) and 2 accumulation micro-steps give finite losses."""
    cfg = replace(CFG, epochs=1, precision=precision, grad_accum_steps=2, state_dir=str(tmp_path / "state"))
    result = _run(toy, tmp_path / "out", cfg)
    assert result["precision"] == str({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    assert result["micro_batch"] == 8
    metrics = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    assert np.isfinite(metrics[["train_loss", "val_loss"]].to_numpy()).all()
    ckpt = load_checkpoint(tmp_path / "out" / CHECKPOINT)
    assert ("scaler_state" in ckpt) == (precision == "fp16")


def test_progress_lines(toy, tmp_path, caplog):
    """Every log_every_steps steps and at the epoch's end: epoch, step/total, loss, lr, records/s, data wait,
    ETA; the validation pass too."""
    with caplog.at_level(logging.INFO, logger="supreme_ecg.pretrain"):
        _run(toy, tmp_path / "out", replace(CFG, epochs=1, state_dir=str(tmp_path / "state")))
    lines = [r.getMessage() for r in caplog.records]
    train = [m for m in lines if m.startswith("train epoch 1/1 step ")]
    assert [m.split()[4] for m in train] == ["2/6", "4/6", "6/6"], lines
    assert all(k in train[0] for k in ("loss=", "lr=", "records/s=", "data_wait=", "eta_epoch=", "eta_run="))
    assert any(m.startswith("val epoch 1/1 step done") and "records/s=" in m for m in lines), lines
    assert any(m.startswith("epoch 1/1: train_loss=") for m in lines)
