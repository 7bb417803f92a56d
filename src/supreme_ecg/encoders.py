"""ECG encoders, chosen by name: ``cnn`` (the small demo CNN), ``resnet18_1d`` and ``vit_tiny_1d``.

Every encoder maps signals (B, 12, L) float32 to ``(tokens (B, T, dim), pooled (B, dim))`` and has
``name``, ``dim`` and a plain-dict ``config`` (its keyword settings) so that
``create_encoder(encoder.name, **encoder.config)`` rebuilds it. ``resnet18_1d`` and ``vit_tiny_1d``
follow MERL's ECG encoders (Liu et al., ICML 2024; written here from its published description);
``out_dim`` projects their tokens to another width (the fusion head's), ``None`` keeps their own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ECG_DEFAULTS = {
    "in_leads": 12, "width": 96, "stem_kernel": 7, "kernel": 5,
    "strides": [2, 2, 2, 2], "blocks": 1, "downsample": 1,
}
RESNET18_DEFAULTS = {
    "in_leads": 12, "widths": [64, 128, 256, 512], "blocks": [2, 2, 2, 2], "stem_kernel": 7,
    "kernel": 3, "downsample": 1, "out_dim": None,
}
VIT_TINY_DEFAULTS = {
    "in_leads": 12, "patch": 50, "seq_len": 5000, "width": 192, "depth": 12, "n_heads": 3,
    "mlp_dim": 768, "dropout": 0.0, "pool": "mean", "downsample": 1, "out_dim": None,
}

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str):
    """Class decorator: make an encoder buildable by ``create_encoder(name, ...)``."""
    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def list_encoders() -> list[str]:
    """The registered encoder names."""
    return sorted(_REGISTRY)


def create_encoder(name: str = "cnn", **settings) -> nn.Module:
    """Build the encoder registered as ``name`` from keyword settings (unknown keys raise)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown ECG encoder {name!r}; choose from {list_encoders()}")
    return _REGISTRY[name](**settings)


def encoder_defaults(name: str) -> dict:
    """A copy of the default settings of the encoder registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown ECG encoder {name!r}; choose from {list_encoders()}")
    return copy.deepcopy(_REGISTRY[name].defaults)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _settings(config: dict, defaults: dict, what: str) -> dict:
    """``defaults`` updated with ``config``; a key ``defaults`` lacks is an error."""
    unknown = set(config) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {what} settings {sorted(unknown)}")
    return {**copy.deepcopy(defaults), **config}


def _decimate(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool the time axis by ``factor`` (1: unchanged)."""
    return F.avg_pool1d(x, factor, factor) if factor > 1 else x


def _projection(width: int, out_dim) -> tuple[nn.Module, int]:
    """A linear map width → out_dim (identity when ``out_dim`` is None or equal) and its output width."""
    if out_dim is None or int(out_dim) == width:
        return nn.Identity(), width
    return nn.Linear(width, int(out_dim)), int(out_dim)


# --------------------------------------------------------------------------- cnn (demo)


class ResBlock1d(nn.Module):
    """Basic residual block: two conv-BN layers (the first strided) and a projected shortcut."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        """Build the block."""
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, kernel, 1, kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.shortcut = nn.Identity()
        if cin != cout or stride != 1:
            self.shortcut = nn.Sequential(nn.Conv1d(cin, cout, 1, stride, bias=False), nn.BatchNorm1d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, L) → (B, cout, L / stride)."""
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def stage_widths(width: int) -> list[int]:
    """Channel widths of the stem and the four stages for a final width ``width``."""
    quarter, half = max(width // 4, 8), max(width // 2, 8)
    return [quarter, quarter, half, width, width]


@register_encoder("cnn")
class ECGEncoder(nn.Module):
    """ResNet-style 1-D CNN: (B, 12, L) → tokens (B, T, width) and pooled (B, width).

    Stem conv (stride 2) + max-pool 2 (pooled before BN/ReLU: same shape, half the work), then four
    residual stages (default strides 2) whose widths grow width/4 → width; ``downsample`` > 1
    average-pools the input first (e.g. 2: 500 → 250 Hz).
    """

    defaults = ECG_DEFAULTS

    def __init__(self, **config):
        """Build from keyword settings (see ``ECG_DEFAULTS``)."""
        super().__init__()
        self.config = _settings(config, self.defaults, "ECG encoder")
        c = self.config
        widths = stage_widths(int(c["width"]))
        self.stem = nn.Sequential(
            nn.Conv1d(c["in_leads"], widths[0], c["stem_kernel"], 2, c["stem_kernel"] // 2, bias=False),
            nn.MaxPool1d(2, 2), nn.BatchNorm1d(widths[0]), nn.ReLU(inplace=True),
        )
        blocks, cin = [], widths[0]
        for cout, stride in zip(widths[1:], c["strides"]):
            for i in range(int(c["blocks"])):
                blocks.append(ResBlock1d(cin, cout, c["kernel"], stride if i == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*blocks)
        self.dim = cin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 12, L) → (tokens (B, T, d), pooled (B, d))."""
        ds = int(self.config["downsample"])
        if ds > 1:
            x = F.avg_pool1d(x, ds, ds)
        tokens = self.stages(self.stem(x)).transpose(1, 2)
        return tokens, tokens.mean(dim=1)


# --------------------------------------------------------------------------- resnet18_1d


@register_encoder("resnet18_1d")
class ResNet18_1d(nn.Module):
    """ResNet-18 in 1-D (MERL's ``resnet18``): stem conv (k 7, stride 2) + BN-ReLU + max-pool (3, 2),
    BasicBlocks ×[2, 2, 2, 2] of widths 64-128-256-512 (strides 1, 2, 2, 2, kernel 3).

    Tokens are the last feature map's time steps: L / 32 (157 at L = 5,000), any L ≥ 1 works.
    """

    defaults = RESNET18_DEFAULTS

    def __init__(self, **config):
        """Build from keyword settings (see ``RESNET18_DEFAULTS``)."""
        super().__init__()
        self.config = _settings(config, self.defaults, "resnet18_1d")
        c = self.config
        widths, k0 = [int(w) for w in c["widths"]], int(c["stem_kernel"])
        if len(widths) != len(c["blocks"]):
            raise ValueError("resnet18_1d: widths and blocks must have the same length")
        self.stem = nn.Sequential(
            nn.Conv1d(c["in_leads"], widths[0], k0, 2, k0 // 2, bias=False), nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True), nn.MaxPool1d(3, 2, 1),
        )
        blocks, cin = [], widths[0]
        for stage, (cout, n) in enumerate(zip(widths, c["blocks"])):
            for i in range(int(n)):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResBlock1d(cin, cout, int(c["kernel"]), stride))
                cin = cout
        self.stages = nn.Sequential(*blocks)
        self.proj, self.dim = _projection(cin, c["out_dim"])
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 12, L) → (tokens (B, ⌈L/32⌉, dim), pooled (B, dim))."""
        x = _decimate(x, int(self.config["downsample"]))
        tokens = self.proj(self.stages(self.stem(x)).transpose(1, 2))
        return tokens, tokens.mean(dim=1)


# --------------------------------------------------------------------------- vit_tiny_1d


class _Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) (GELU)."""

    def __init__(self, width: int, n_heads: int, mlp_dim: int, dropout: float):
        """Build the block."""
        super().__init__()
        if width % n_heads:
            raise ValueError(f"vit_tiny_1d: width {width} is not divisible by n_heads {n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, width) → (B, T, width)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.out(y.transpose(1, 2).reshape(b, t, d)), self.dropout, self.training)
        return x + self.mlp(self.norm2(x))


@register_encoder("vit_tiny_1d")
class ViTTiny1d(nn.Module):
    """ViT-tiny in 1-D (MERL's ``vit_tiny``): the 12 leads cut into patches of 50 samples and
    embedded linearly (5,000 samples → 100 tokens), width 192, depth 12, 3 heads, MLP 768, learned
    position embedding, pre-norm blocks and a final LayerNorm; pooled = token mean or a [CLS] token.

    ``seq_len`` sizes the position table; another length (a multiple of the patch) resamples it
    linearly.
    """

    defaults = VIT_TINY_DEFAULTS

    def __init__(self, **config):
        """Build from keyword settings (see ``VIT_TINY_DEFAULTS``)."""
        super().__init__()
        self.config = _settings(config, self.defaults, "vit_tiny_1d")
        c = self.config
        width, patch, ds = int(c["width"]), int(c["patch"]), int(c["downsample"])
        if c["pool"] not in ("mean", "cls"):
            raise ValueError(f"vit_tiny_1d: pool must be 'mean' or 'cls', not {c['pool']!r}")
        if int(c["seq_len"]) % (patch * ds):
            raise ValueError(f"vit_tiny_1d: seq_len {c['seq_len']} is not a multiple of patch × downsample")
        self.n_positions = int(c["seq_len"]) // (patch * ds)
        self.patch_embed = nn.Conv1d(c["in_leads"], width, patch, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.n_positions, width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if c["pool"] == "cls" else None
        self.drop = nn.Dropout(float(c["dropout"]))
        self.blocks = nn.Sequential(*[_Block(width, int(c["n_heads"]), int(c["mlp_dim"]), float(c["dropout"]))
                                      for _ in range(int(c["depth"]))])
        self.norm = nn.LayerNorm(width)
        self.proj, self.dim = _projection(width, c["out_dim"])
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal (std 0.02) linear weights and embeddings, zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.trunc_normal_(w, std=1.0 / math.sqrt(w.shape[1] * w.shape[2]))
        nn.init.zeros_(self.patch_embed.bias)

    def _positions(self, n: int) -> torch.Tensor:
        """Position embedding for ``n`` tokens: the table, or it resampled linearly to ``n``."""
        if n == self.n_positions:
            return self.pos_embed
        return F.interpolate(self.pos_embed.transpose(1, 2), size=n, mode="linear",
                             align_corners=False).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 12, L) → (tokens (B, L/patch, dim), pooled (B, dim)); L/downsample a multiple of patch."""
        x = _decimate(x, int(self.config["downsample"]))
        patch = int(self.config["patch"])
        if x.shape[-1] % patch or x.shape[-1] == 0:
            raise ValueError(f"vit_tiny_1d needs a length that is a positive multiple of the patch ({patch}) "
                             f"after downsample {self.config['downsample']}; got {x.shape[-1]} samples")
        tokens = self.patch_embed(x).transpose(1, 2)
        tokens = tokens + self._positions(tokens.shape[1]).to(tokens.dtype)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], 1)
        tokens = self.proj(self.norm(self.blocks(self.drop(tokens))))
        if self.cls_token is not None:
            return tokens[:, 1:], tokens[:, 0]
        return tokens, tokens.mean(dim=1)
