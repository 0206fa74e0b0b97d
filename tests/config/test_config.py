"""`load_config(path, overrides)`: YAML overrides, task dropping, and ConfigError messages."""

from __future__ import annotations

import pytest
import yaml

from mtl.config import DEFAULT_CONFIG, load_config
from mtl.errors import ConfigError, MTLError


def config_error(*overrides: str, path=DEFAULT_CONFIG) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


def write_yaml(tmp_path, data) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_error_is_an_mtl_error_so_entry_points_print_it_without_traceback():
    assert issubclass(ConfigError, MTLError)


def test_default_config_loads_with_three_tasks_and_defaults_filled_in():
    cfg = load_config(DEFAULT_CONFIG, [])
    assert list(cfg.tasks) == ["toxicity", "emotion", "sentiment"]
    assert cfg.tasks.emotion.loss == "bce"  # filled from the task type
    assert cfg.tasks.toxicity.loss == "ce"
    assert cfg.tasks.toxicity.gamma == 2.0  # TASK_DEFAULTS
    assert cfg.backbone.attn_implementation == "sdpa"  # DEFAULTS, not in the YAML


def test_override_float_in_exponent_form_becomes_float_not_string():
    cfg = load_config(DEFAULT_CONFIG, ["optim.lr_backbone=1e-5", "optim.lr_heads=3.0e-4"])
    assert isinstance(cfg.optim.lr_backbone, float)
    assert cfg.optim.lr_backbone == pytest.approx(1e-5)
    assert cfg.optim.lr_heads == pytest.approx(3e-4)


def test_override_int_for_float_key_becomes_float():
    cfg = load_config(DEFAULT_CONFIG, ["optim.lr_heads=1"])
    assert cfg.optim.lr_heads == 1.0
    assert isinstance(cfg.optim.lr_heads, float)


def test_override_int_stays_int_where_int_is_allowed():
    cfg = load_config(DEFAULT_CONFIG, ["trainer.max_epochs=7", "trainer.limit_train_batches=1"])
    assert cfg.trainer.max_epochs == 7 and isinstance(cfg.trainer.max_epochs, int)
    # Lightning reads 1 as "one batch" but 1.0 as "100% of the batches"
    assert cfg.trainer.limit_train_batches == 1
    assert isinstance(cfg.trainer.limit_train_batches, int)


def test_override_fraction_for_limit_batches_stays_float():
    cfg = load_config(DEFAULT_CONFIG, ["trainer.limit_val_batches=0.25"])
    assert cfg.trainer.limit_val_batches == 0.25


def test_override_bools():
    cfg = load_config(
        DEFAULT_CONFIG, ["early_stopping.enabled=false", "backbone.gradient_checkpointing=true"]
    )
    assert cfg.early_stopping.enabled is False
    assert cfg.backbone.gradient_checkpointing is True


def test_override_lists_and_nested_task_keys():
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "optim.betas=[0.8, 0.99]",
            "tasks.emotion.label_columns=[joy, anger]",
            "tasks.toxicity.class_weights=[1.0, 3.0]",
            "tasks.toxicity.gamma=0.5",
        ],
    )
    assert cfg.optim.betas == [0.8, 0.99]
    assert cfg.tasks.emotion.label_columns == ["joy", "anger"]
    assert cfg.tasks.toxicity.class_weights == [1.0, 3.0]
    assert cfg.tasks.toxicity.gamma == 0.5
    # siblings of an overridden nested key keep their values from the file
    assert cfg.tasks.toxicity.train == "toxicity_train.csv"
    assert cfg.optim.weight_decay == 0.01


def test_override_of_task_key_keeps_other_tasks_untouched():
    cfg = load_config(DEFAULT_CONFIG, ["tasks.sentiment.text_column=body"])
    assert cfg.tasks.sentiment.text_column == "body"
    assert cfg.tasks.toxicity.text_column == "text"


def test_null_task_override_drops_the_task():
    cfg = load_config(DEFAULT_CONFIG, ["tasks.sentiment=null"])
    assert list(cfg.tasks) == ["toxicity", "emotion"]


def test_override_can_add_a_new_task():
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "tasks.topic.type=multiclass",
            "tasks.topic.train=topic.csv",
            "tasks.topic.label_columns=[topic]",
        ],
    )
    assert cfg.tasks.topic.type == "multiclass"
    assert cfg.tasks.topic.loss == "ce"


def test_focal_loss_is_accepted_for_every_task_type():
    cfg = load_config(
        DEFAULT_CONFIG,
        ["tasks.toxicity.loss=focal", "tasks.emotion.loss=focal", "tasks.sentiment.loss=ce"],
    )
    assert cfg.tasks.toxicity.loss == "focal"
    assert cfg.tasks.emotion.loss == "focal"
    assert cfg.tasks.sentiment.loss == "ce"


def test_unknown_top_level_key_suggests_close_spelling():
    message = config_error("trainer.max_epoch=1")
    assert "'trainer.max_epoch'" in message
    assert "Did you mean 'max_epochs'" in message


def test_unknown_task_key_suggests_close_spelling():
    message = config_error("tasks.toxicity.typ=binary")
    assert "'tasks.toxicity.typ'" in message
    assert "Did you mean 'type'" in message


def test_unknown_key_in_yaml_file_is_reported(tmp_path):
    path = write_yaml(tmp_path, {"optimizer": {"lr": 1}})
    message = config_error(path=path)
    assert "'optimizer'" in message and "Did you mean 'optim'" in message


def test_wrong_type_names_the_key_and_expected_type():
    message = config_error("trainer.max_epochs=abc")
    assert "'trainer.max_epochs'" in message
    assert "int" in message and "'abc'" in message


def test_bool_is_not_accepted_where_an_int_is_meant():
    message = config_error("data.batch_size=true")
    assert "'data.batch_size'" in message


def test_int_is_not_accepted_where_a_bool_is_meant():
    message = config_error("early_stopping.enabled=1")
    assert "'early_stopping.enabled'" in message and "bool" in message


def test_wrong_type_in_task_key_names_the_task_key():
    message = config_error("tasks.toxicity.gamma=strong")
    assert "'tasks.toxicity.gamma'" in message and "float" in message


def test_bad_choice_lists_the_choices():
    message = config_error("backbone.pooling=max")
    assert "'backbone.pooling'" in message
    assert "cls, pooler, mean" in message and "'max'" in message


def test_bad_choice_suggests_close_spelling():
    assert "Did you mean 'mean'" in config_error("backbone.pooling=maen")


def test_bad_task_type_is_a_choice_error():
    message = config_error("tasks.toxicity.type=binnary")
    assert "'tasks.toxicity.type'" in message and "Did you mean 'binary'" in message


def test_missing_config_file(tmp_path):
    message = config_error(path=tmp_path / "nope.yaml")
    assert "Config file not found" in message and "nope.yaml" in message


def test_config_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert "must hold a mapping" in config_error(path=path)


def test_task_without_train_file(tmp_path):
    path = write_yaml(tmp_path, {"tasks": {"toxicity": {"type": "binary"}}})
    message = config_error(path=path)
    assert "'tasks.toxicity.train' is missing" in message


def test_bce_loss_is_rejected_for_a_binary_task():
    message = config_error("tasks.toxicity.loss=bce")
    assert "'tasks.toxicity.loss'" in message
    assert "ce or focal for a binary task" in message


def test_ce_loss_is_rejected_for_a_multilabel_task():
    message = config_error("tasks.emotion.loss=ce")
    assert "'tasks.emotion.loss'" in message
    assert "bce or focal for a multilabel task" in message


def test_binary_task_needs_exactly_one_label_column():
    message = config_error("tasks.toxicity.label_columns=[a, b]")
    assert "'tasks.toxicity.label_columns'" in message and "exactly one" in message


def test_config_without_tasks(tmp_path):
    path = write_yaml(tmp_path, {"seed": 1})
    assert "defines no tasks" in config_error(path=path)


def test_dropping_every_task_leaves_no_tasks():
    message = config_error("tasks.toxicity=null", "tasks.emotion=null", "tasks.sentiment=null")
    assert "defines no tasks" in message


def test_task_that_is_not_a_mapping():
    assert "'tasks.toxicity' must be a mapping" in config_error("tasks.toxicity=5")


def test_override_without_equals_sign():
    assert "key.sub=value" in config_error("trainer.max_epochs")


def test_non_positive_batch_size():
    assert "'data.batch_size' must be a positive integer" in config_error("data.batch_size=0")


def test_label_smoothing_out_of_range():
    assert "label_smoothing" in config_error("tasks.toxicity.label_smoothing=1.0")


def test_bad_class_weights_string_and_threshold_string():
    assert "class_weights" in config_error("tasks.toxicity.class_weights=balanced")
    assert "threshold" in config_error("tasks.emotion.threshold=best")
