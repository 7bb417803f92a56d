"""Throughput of pre-training: each encoder's forward + backward, and the streaming data path.

    python benchmarks/train_throughput.py [--records 2000] [--workdir DIR] [--steps N] [--workers 1,2,4]

Writes ``records`` demo MIMIC-style records (:func:`supreme_ecg.demo.corpus.generate_demo`, 500 Hz,
12 × 5000), indexes them and preprocesses them into one shard stored as float32 and one as float16
(:func:`supreme_ecg.preprocess.preprocess_shard`), then measures

* the data path (:class:`supreme_ecg.pretrain.data._Data`, streaming: ``max_in_memory_records=0``)
  over one epoch after a warm-up epoch (page cache warm): records per CPU second in process
  (``loader_workers=0``, the per-core rate) and records per wall second at 1/2/4 workers;
* each encoder of the registry (``create_encoder``) in the whole model (width 256, 80 label
  queries): records/s of a training step (forward, BCE, backward, AdamW) at batch 64 on the device
  found (CUDA with bf16 autocast, else CPU float32), its peak GPU memory, and the hours 50 epochs
  of MIMIC-IV-ECG (800,035 records) would take at that rate on one device.

The last line is ``loader_records_per_s_core=R model_records_per_s=name:r,... device=D``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch


def make_shards(workdir: Path, records: int) -> dict:
    """Demo records → manifest → one float32 and one float16 shard."""
    from supreme_ecg.datasets import index_dataset
    from supreme_ecg.demo.corpus import generate_demo
    from supreme_ecg.preprocess import PreprocessConfig, preprocess_shard

    raw = workdir / "raw"
    generate_demo(raw, seed=0, n_pretrain=records, n_ptbxl=20, n_cpsc=20, n_csn=20)
    manifest = workdir / "manifest.parquet"
    pq.write_table(pa.Table.from_pandas(index_dataset("mimic", raw), preserve_index=False), manifest)
    shards = {}
    for dtype in ("float32", "float16"):
        shards[dtype] = workdir / f"shard-{dtype}.parquet"
        preprocess_shard(manifest, 0, 1, PreprocessConfig(signal_dtype=dtype), shards[dtype],
                         workdir / f"rejects-{dtype}.parquet", root=raw)
    return shards


MIMIC_RECORDS = 800_035


def cpu_seconds() -> float:
    """User + system seconds of this process (its threads, not its children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def loader_rate(shard: Path, workers: int) -> tuple[float, float, int]:
    """(records per wall second, per CPU second of this process, records) of one streamed epoch."""
    from supreme_ecg.pretrain.config import PretrainConfig
    from supreme_ecg.pretrain.data import _Data

    ids = pq.read_table(shard, columns=["record_id"]).column("record_id").to_pylist()
    cfg = PretrainConfig(max_in_memory_records=0, batch_size=64, loader_workers=workers, device="cpu", downsample=1,
                         val_fraction=0.0)
    data = _Data([shard], {str(r): 0 for r in ids}, np.zeros((1, 4), np.int8), cfg)
    for _ in data.train_batches(0):  # warm-up: page cache, worker start
        pass
    wall, cpu, n = time.perf_counter(), cpu_seconds(), 0
    for x, _y in data.train_batches(1):
        n += len(x)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return n / wall, n / max(cpu, 1e-9), n


def model_rate(name: str, device: torch.device, steps: int, n_samples: int, batch: int = 64,
               n_labels: int = 80) -> tuple[float, float, int]:
    """(records/s of a training step, peak GPU memory GiB or 0, parameters) of the whole model.

    The step is the pre-training step: encoder + query-fusion head over ``n_labels`` label queries
    (384-d, MiniLM's size), masked-free BCE, AdamW; bf16 autocast on CUDA, fp32 on CPU.
    """
    from supreme_ecg.model import build_model, default_model_config

    model = build_model(default_model_config(text_dim=384, width=256, encoder=name)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 12, n_samples, device=device)
    query = torch.randn(n_labels, 384, device=device)
    y = (torch.rand(batch, n_labels, device=device) < 0.1).float()
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x, query)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if amp:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if amp:
        torch.cuda.synchronize()
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if amp else 0.0
    return batch * steps / (time.perf_counter() - t), mem, sum(p.numel() for p in model.parameters())


def main() -> None:
    """Make the shards, measure, print."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--steps", type=int, default=0, help="timed model steps (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--encoders", default="", help="comma-separated subset (default: all registered)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t = time.perf_counter()
        shards = make_shards(Path(tmp), args.records)
        n_samples = pq.ParquetFile(shards["float32"]).schema_arrow.field("signal").type.byte_width // 48
        print(f"shards: {args.records} demo records in {time.perf_counter() - t:.0f} s "
              f"({', '.join(f'{k} {v.stat().st_size / 2 ** 20:.0f} MiB' for k, v in shards.items())})")
        core = {}
        for dtype, shard in shards.items():
            wall, cpu, n = loader_rate(shard, 0)
            core[dtype] = cpu
            print(f"loader {dtype}: in process {cpu:,.0f} records/s per core ({wall:,.0f}/s wall, {n} records)")
            for w in [int(v) for v in args.workers.split(",") if v]:
                wall, _, _ = loader_rate(shard, w)
                print(f"loader {dtype}: {w} workers {wall:,.0f} records/s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (20 if device.type == "cuda" else 2)
    from supreme_ecg.encoders import list_encoders

    names = [n for n in list_encoders() if not args.encoders or n in args.encoders.split(",")]
    rates = {}
    for name in names:
        rates[name], mem, n_params = model_rate(name, device, steps, n_samples)
        extra = f", peak GPU memory {mem:.2f} GiB" if mem else ""
        hours = MIMIC_RECORDS * 50 / rates[name] / 3600
        print(f"model {name} ({n_params / 1e6:.2f} M parameters, width 256, 80 labels): {rates[name]:,.1f} "
              f"records/s per training step, batch 64, {device}{' bf16' if device.type == 'cuda' else ' fp32'}"
              f"{extra}; 50 MIMIC epochs would take {hours:,.1f} h on one such device")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"loader_records_per_s_core={core['float32']:.0f} model_records_per_s="
          + ",".join(f"{k}:{v:.1f}" for k, v in rates.items()) + f" device={gpu.replace(' ', '_')}")


if __name__ == "__main__":
    main()
