"""Settings of the pretrain stage and the names of its files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from supreme_ecg.model import MINILM_NAME

CHECKPOINT = "checkpoint.pt"
IN_PROGRESS = "checkpoint.in_progress.pt"
METRICS_COLUMNS = ["epoch", "train_loss", "val_loss", "val_macro_auc", "lr", "seconds"]
#: shard column naming each record's pre-training split (train / val / "" = not for pre-training)
SPLIT_COLUMN = "pretrain_split"
# settings that may change between a run and its resumption (everything else must match)
# (gpus / grad_accum_steps may change too: the global batch stays batch_size; a mid-epoch position is
# then dropped and the run continues from its last whole epoch)
RUNTIME_FIELDS = ("epochs", "device", "threads", "resume", "precision", "compile", "grad_accum_steps", "gpus",
                  "checkpoint_every_steps", "state_dir", "log_every_steps", "loader_workers")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the pretrain stage."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    pos_weight: bool = False
    pos_weight_max: float = 50.0
    val_fraction: float = 0.1
    group_column: str = "record_id"
    seed: int = 42
    encoder: str = "cnn"
    width: int = 96
    n_heads: int = 4
    dropout: float = 0.1
    downsample: int = 1
    text_encoder: str = MINILM_NAME
    text_pooling: str | None = None
    device: str = "auto"
    threads: int = 2
    resume: bool = True
    query_members: bool = True
    min_member_chars: int = 4
    max_query_members: int = 16
    max_in_memory_records: int = 50_000
    shuffle_buffer: int = 2048
    precision: str = "auto"  # auto: bf16 on a CUDA device that has it (else fp16), fp32 on the CPU
    compile: bool = False  # torch.compile the model
    grad_accum_steps: int = 1  # micro-steps per optimizer step; per-rank micro-batch = batch_size // (gpus * this)
    gpus: int = 1  # processes under torchrun (the rule launches them when > 1)
    checkpoint_every_steps: int = 200  # resume state every N optimizer steps too (0: at epoch ends only)
    state_dir: str = "cache/pretrain"  # resume state, outside the declared outputs (survives reruns)
    log_every_steps: int = 50  # progress line every N optimizer steps (and validation batches)
    loader_workers: int = 2

    @classmethod
    def from_mapping(cls, values: dict) -> PretrainConfig:
        """Build from a config mapping; unknown keys raise ``ValueError``."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown pretrain settings {sorted(unknown)}")
        cfg = cls(**values)
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {cfg.precision!r}")
        return cfg

    def resume_key(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}
