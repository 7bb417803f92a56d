"""Settings of the pretrain stage and the names of its files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from supreme_ecg.config_schema import schema_defaults

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
#: the config schema's ``pretrain`` defaults: the field defaults below (one source for Python and Snakemake)
_DEFAULTS = schema_defaults("pretrain")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the pretrain stage; every default but ``threads`` is the config schema's (``pretrain``)."""

    epochs: int = _DEFAULTS["epochs"]
    batch_size: int = _DEFAULTS["batch_size"]
    lr: float = _DEFAULTS["lr"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    warmup_steps: int = _DEFAULTS["warmup_steps"]
    min_lr_ratio: float = _DEFAULTS["min_lr_ratio"]
    max_grad_norm: float = _DEFAULTS["max_grad_norm"]
    pos_weight: bool = _DEFAULTS["pos_weight"]
    pos_weight_max: float = _DEFAULTS["pos_weight_max"]
    val_fraction: float = _DEFAULTS["val_fraction"]
    group_column: str = _DEFAULTS["group_column"]
    seed: int = _DEFAULTS["seed"]
    encoder: str = _DEFAULTS["encoder"]
    width: int = _DEFAULTS["width"]
    n_heads: int = _DEFAULTS["n_heads"]
    dropout: float = _DEFAULTS["dropout"]
    downsample: int = _DEFAULTS["downsample"]
    text_encoder: str = _DEFAULTS["text_encoder"]
    text_pooling: str | None = _DEFAULTS["text_pooling"]
    device: str = _DEFAULTS["device"]
    threads: int = 2  # runtime, not a config setting: the rule passes its threads
    resume: bool = _DEFAULTS["resume"]
    query_members: bool = _DEFAULTS["query_members"]
    min_member_chars: int = _DEFAULTS["min_member_chars"]
    max_query_members: int = _DEFAULTS["max_query_members"]
    max_in_memory_records: int = _DEFAULTS["max_in_memory_records"]
    shuffle_buffer: int = _DEFAULTS["shuffle_buffer"]
    precision: str = _DEFAULTS["precision"]
    compile: bool = _DEFAULTS["compile"]
    grad_accum_steps: int = _DEFAULTS["grad_accum_steps"]
    gpus: int = _DEFAULTS["gpus"]
    checkpoint_every_steps: int = _DEFAULTS["checkpoint_every_steps"]
    state_dir: str = _DEFAULTS["state_dir"]
    log_every_steps: int = _DEFAULTS["log_every_steps"]
    loader_workers: int = _DEFAULTS["loader_workers"]

    @classmethod
    def from_mapping(cls, values: dict) -> PretrainConfig:
        """Build from a config mapping (missing keys: the schema's defaults); unknown keys raise ``ValueError``."""
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
