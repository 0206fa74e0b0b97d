"""Every encoder family end to end (train 2 folds → predict → ONNX export → the export's own
runtime) on tiny random models, and mtl/backbone.py's checks: the attention a model class
supports, a tokenizer that belongs to its model, a pooler that exists, layer-wise LR depths.

The tiny models (2 layers, hidden 32, a tokenizer of each family's own kind) come from
tests/families.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from box import Box
from families import FAMILIES, config_of, make_backbone
from helpers import REPO, tiny_overrides

from mtl.backbone import (
    ATTENTION_KEY,
    backbone_path,
    check_tokenizer,
    encoder_record,
    load_encoder,
    load_tokenizer,
)
from mtl.config import load_config
from mtl.errors import CheckpointError, ConfigError
from mtl.inference.export import RUNTIME_FILE, export_run
from mtl.inference.onnx_predict import OnnxPredictor
from mtl.inference.predictor import Predictor
from mtl.run.train import train


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """family → its tiny model folder, built once per module on first use."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = make_backbone(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


def exported_runtime(folder: Path):
    """The export's own mtl_onnx.py, imported from the export folder (as a user would)."""
    spec = importlib.util.spec_from_file_location("mtl_onnx_under_test", folder / RUNTIME_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ExportedModel(str(folder), model="fp32")


# --- item 6: every family end to end ---------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_every_encoder_family_trains_predicts_exports_and_serves(
    family, backbones, data_dir, tmp_path
):
    folder = backbones(family)
    cfg = load_config(
        REPO / "configs" / "default.yaml",
        tiny_overrides(folder, data_dir, tmp_path)
        + ["cv.n_splits=2", "trainer.max_epochs=1", "data.max_train_rows=48"],
    )
    train(cfg)
    run = tmp_path / cfg.run.name
    texts = ["you idiot", "thanks friend, so nice", "wow happy", "", "love " * 80]
    predictor = Predictor.from_run(run, device="cpu")  # every fold rebuilt from its checkpoint
    expected = predictor.predict_proba(texts)
    assert predictor.tokenizer.pad_token_id == config_of(family, 1).pad_token_id
    for task, probs in expected.items():
        assert np.isfinite(probs).all() and len(np.unique(probs.round(6), axis=0)) > 1, task
    export = export_run(run)  # checks fp32 parity with the predictor itself (≤ 1e-4)
    onnx = OnnxPredictor.from_export(export, model="fp32", device="cpu")
    runtime = exported_runtime(export)
    for got in (onnx.predict_proba(texts), runtime.predict_proba(texts)):
        for task in expected:
            np.testing.assert_allclose(got[task], expected[task], rtol=0, atol=1e-5)


# --- item 1: the attention a model class supports, recorded and reused ------------------------


def _backbone_box(folder: Path, attention: str | None = "sdpa") -> Box:
    return Box(name=str(folder), attn_implementation=attention, gradient_checkpointing=False)


@pytest.mark.parametrize("family", ["mpnet", "deberta-v2"])
def test_an_encoder_without_sdpa_is_built_with_eager_and_rebuilt_from_its_record(family, backbones):
    folder = backbones(family)
    encoder = load_encoder(_backbone_box(folder))
    record = encoder_record(encoder)
    assert record[ATTENTION_KEY] == "eager"
    again = load_encoder(_backbone_box(folder), record)  # what a checkpoint rebuilds
    assert type(again) is type(encoder)
    # a checkpoint from before the record: the fallback is built from a fresh config
    old = {k: v for k, v in record.items() if k != ATTENTION_KEY}
    assert type(load_encoder(_backbone_box(folder), old)) is type(encoder)


def test_the_recorded_attention_is_what_a_rebuild_asks_for(backbones):
    encoder = load_encoder(_backbone_box(backbones("bert")))
    record = encoder_record(encoder)
    assert record[ATTENTION_KEY] == "sdpa"
    record[ATTENTION_KEY] = "eager"
    rebuilt = load_encoder(_backbone_box(backbones("bert"), "sdpa"), record)
    assert rebuilt.config._attn_implementation == "eager"


def test_a_checkpoint_whose_encoder_cannot_be_built_says_why_not_corrupt(
    backbones, data_dir, tmp_path
):
    from mtl.inference.checkpoint import build_model

    cfg = load_config(
        REPO / "configs" / "default.yaml",
        tiny_overrides(backbones("bert"), data_dir, tmp_path)
        + ["trainer.max_epochs=1", "data.max_train_rows=16", "tasks.emotion=null"],
    )
    train(cfg)
    path = tmp_path / cfg.run.name / "fold_0" / "best.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["backbone_config"]["model_type"] = "no-such-model"
    with pytest.raises(CheckpointError) as info:
        build_model(ckpt, path)
    message = str(info.value)
    assert "cannot be built" in message and "no-such-model" in message
    assert "corrupt" not in message and "weights fit" not in message


# --- item 2: a tokenizer that belongs to its model ------------------------------------------


def _copy_model_only(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


@pytest.mark.parametrize("family", ["roberta", "mpnet"])
def test_a_model_folder_without_tokenizer_files_is_refused_before_the_run_folder(
    family, backbones, data_dir, tmp_path
):
    bare = _copy_model_only(backbones(family), tmp_path / "bare")
    cfg = load_config(
        REPO / "configs" / "default.yaml", tiny_overrides(bare, data_dir, tmp_path / "out")
    )
    with pytest.raises(ConfigError, match="no tokenizer files") as info:
        train(cfg)
    assert "save_pretrained" in str(info.value)
    assert not (tmp_path / "out" / cfg.run.name).exists()


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(backbones):
    from transformers import AutoConfig

    tokenizer = load_tokenizer(str(backbones("roberta")))  # fits: no error
    config = AutoConfig.from_pretrained(backbones("roberta"))
    cases = {
        "index past its embedding table": dict(vocab_size=len(tokenizer) - 10),
        "not this model's tokenizer": dict(vocab_size=len(tokenizer) * 4),  # a placeholder's size
        "pads with id 1 but the model's pad_token_id is 0": dict(pad_token_id=0),
    }
    for message, change in cases.items():
        wrong = AutoConfig.from_pretrained(backbones("roberta"), **change)
        with pytest.raises(ConfigError, match=message):
            check_tokenizer("x", tokenizer, wrong)
    check_tokenizer("x", tokenizer, config)


# --- item 3: pooling: pooler on an encoder without a pooler ---------------------------------


@pytest.mark.parametrize("family", ["distilbert", "electra", "deberta-v2"])
def test_pooler_pooling_without_a_pooler_is_refused_before_the_run_folder(
    family, backbones, data_dir, tmp_path
):
    cfg = load_config(
        REPO / "configs" / "default.yaml",
        tiny_overrides(backbones(family), data_dir, tmp_path) + ["backbone.pooling=pooler"],
    )
    with pytest.raises(ConfigError, match="has no pooler layer.*cls or mean"):
        train(cfg)
    assert not (tmp_path / cfg.run.name).exists()


def test_pooler_pooling_is_accepted_where_the_model_has_one(backbones):
    from mtl.backbone import check_backbone

    for family in ("bert", "albert", "mpnet"):
        check_backbone(Box(name=str(backbones(family)), pooling="pooler"))


# --- item 4: layer-wise LR decay depths -----------------------------------------------------


def _lrs(family: str, folder: Path) -> dict[str, float]:
    from mtl.model.network import MultiTaskModel
    from mtl.model.optim import param_groups
    from mtl.model.weighting import UncertaintyWeighting

    encoder = load_encoder(_backbone_box(folder))
    model = MultiTaskModel(encoder, {"a": 2})
    optim = Box(lr_backbone=1.0, lr_heads=1.0, lr_log_vars=1.0, weight_decay=0.0,
                layer_lr_decay=0.5)  # fmt: skip
    groups = param_groups(model, UncertaintyWeighting(["a"]), optim)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    return {name: lr_of[id(p)] for name, p in encoder.named_parameters()}


def test_albert_shared_layer_group_gets_the_middle_depths_lr(backbones):
    lrs = _lrs("albert", backbones("albert"))  # 2 layers share one group: depth 1.5
    shared = {lr for n, lr in lrs.items() if "albert_layer_groups" in n}
    assert shared == {0.5**0.5}
    assert lrs["embeddings.word_embeddings.weight"] == 0.25
    assert lrs["encoder.embedding_hidden_mapping_in.weight"] == 0.25
    assert lrs["pooler.weight"] == 1.0


def test_deberta_relative_positions_and_their_norm_decay_with_the_embeddings(backbones):
    lrs = _lrs("deberta-v2", backbones("deberta-v2"))
    assert lrs["encoder.rel_embeddings.weight"] == lrs["encoder.LayerNorm.weight"] == 0.25
    assert lrs["embeddings.word_embeddings.weight"] == 0.25
    assert lrs["encoder.layer.0.attention.self.query_proj.weight"] == 0.5
    assert lrs["encoder.layer.1.output.dense.weight"] == 1.0


def test_mpnet_relative_attention_bias_decays_with_the_embeddings(backbones):
    lrs = _lrs("mpnet", backbones("mpnet"))
    assert lrs["encoder.relative_attention_bias.weight"] == 0.25
    assert lrs["pooler.dense.weight"] == 1.0


def test_albert_shared_layers_freeze_all_or_none(backbones):
    folder = backbones("albert")  # 2 layers sharing one group
    with pytest.raises(
        ConfigError, match="shares its layer weights across all 2 layers.*Use 0 or 2"
    ):
        load_encoder(Box(_backbone_box(folder), freeze_layers=1))
    encoder = load_encoder(Box(_backbone_box(folder), freeze_layers=2))
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"pooler.weight", "pooler.bias"}


def test_freeze_layers_past_the_depth_is_refused_before_the_run_folder(
    backbones, data_dir, tmp_path
):
    cfg = load_config(
        REPO / "configs" / "default.yaml",
        tiny_overrides(backbones("roberta"), data_dir, tmp_path) + ["backbone.freeze_layers=5"],
    )
    with pytest.raises(ConfigError, match="backbone.freeze_layers' is 5.*has 2 layers"):
        train(cfg)
    assert not (tmp_path / cfg.run.name).exists()


# --- item 5: one home for the backbone -------------------------------------------------------


def test_fetchable_names_resolve_through_mtl_fetch(monkeypatch, tmp_path):
    import mtl.fetch

    monkeypatch.setattr(mtl.fetch, "FETCHABLE", {"mpnet": object()})
    monkeypatch.setattr(mtl.fetch, "fetched_backbone", lambda name: tmp_path / name)
    assert backbone_path("mpnet") == str(tmp_path / "mpnet")
    assert backbone_path("some/hf-id") == "some/hf-id"


def test_data_and_backbone_import_nothing_from_model_or_inference():
    """mtl/backbone.py sits below data, model and inference; data imports no model code."""
    import ast

    files = [REPO / "mtl" / "backbone.py", *sorted((REPO / "mtl" / "data").glob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("mtl.model", "mtl.inference")), (
                    path,
                    node.module,
                )
