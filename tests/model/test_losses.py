"""Per-task losses (CE, focal, BCE) and the loss-weighting methods."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtl.config import DEFAULT_CONFIG, load_config
from mtl.data.tasks import TaskMeta
from mtl.model.losses import TaskLoss, focal_bce, focal_loss, reduce_rows
from mtl.model.weighting import (
    DWAWeighting,
    FixedWeighting,
    RandomWeighting,
    UncertaintyWeighting,
    build_weighting,
)

TASKS = ["toxicity", "emotion", "sentiment"]


@pytest.fixture
def logits_targets():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 3, generator=gen) * 2
    targets = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2, 1])
    return logits, targets


@pytest.fixture
def multilabel():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=gen) * 2
    targets = (torch.rand(6, 4, generator=gen) > 0.5).float()
    return logits, targets


def meta(kind: str = "multiclass", n: int = 3, class_weights=None) -> TaskMeta:
    classes = [f"c{i}" for i in range(n)]
    return TaskMeta(name="t", type=kind, classes=classes, class_weights=class_weights)


# --- focal and cross-entropy: one loss per row, class weights applied per row -------------------


def test_focal_loss_with_gamma_zero_equals_cross_entropy(logits_targets):
    logits, targets = logits_targets
    expected = F.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(focal_loss(logits, targets, gamma=0.0), expected, atol=1e-6)


def test_focal_loss_with_gamma_zero_equals_weighted_cross_entropy_per_row(logits_targets):
    # issue 22 item 2: per row w[y]·ℓ (torch's reduction="none"); the old test compared torch's
    # mean, Σwℓ / Σw, whose denominator depends on the batch's class mix
    logits, targets = logits_targets
    weight = torch.tensor([0.5, 2.0, 3.0])
    expected = F.cross_entropy(logits, targets, weight=weight, reduction="none")
    got = focal_loss(logits, targets, gamma=0.0, weight=weight)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, F.cross_entropy(logits, targets, reduction="none"), atol=1e-4)


def test_focal_loss_down_weights_easy_examples(logits_targets):
    logits, targets = logits_targets
    focal = focal_loss(logits, targets, gamma=2.0)
    assert (focal < F.cross_entropy(logits, targets, reduction="none")).all()


def test_focal_bce_with_gamma_zero_equals_bce(multilabel):
    logits, targets = multilabel
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    assert torch.allclose(focal_bce(logits, targets, gamma=0.0), expected, atol=1e-6)


def test_focal_bce_with_gamma_zero_equals_bce_with_pos_weight(multilabel):
    logits, targets = multilabel
    pos_weight = torch.tensor([1.0, 2.0, 0.5, 4.0])
    expected = F.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight, reduction="none"
    ).mean(1)
    got = focal_bce(logits, targets, gamma=0.0, pos_weight=pos_weight)
    assert torch.allclose(got, expected, atol=1e-6)


def test_task_loss_focal_gamma_zero_matches_ce_task_loss(logits_targets):
    logits, targets = logits_targets
    m = meta(class_weights=[1.0, 2.0, 0.5])
    focal = TaskLoss(m, "focal", gamma=0.0)(logits, targets)
    ce = TaskLoss(m, "ce")(logits, targets)
    assert torch.allclose(focal, ce, atol=1e-6)


def test_task_loss_weighs_each_row_by_its_class_weight(logits_targets):
    logits, targets = logits_targets
    weights = [1.0, 2.0, 0.5]
    got = TaskLoss(meta(class_weights=weights), "ce")(logits, targets)
    plain = F.cross_entropy(logits, targets, reduction="none")
    assert got.shape == (len(targets),)
    assert torch.allclose(got, torch.tensor(weights)[targets] * plain, atol=1e-6)
    # the batch mean is Σwℓ / n, not torch's Σwℓ / Σw
    assert reduce_rows(got).item() == pytest.approx((torch.tensor(weights)[targets] * plain).mean())


def test_label_smoothing_changes_ce_exactly_as_torch_does(logits_targets):
    logits, targets = logits_targets
    smoothed = TaskLoss(meta(), "ce", label_smoothing=0.1)(logits, targets)
    expected = F.cross_entropy(logits, targets, label_smoothing=0.1, reduction="none")
    assert torch.allclose(smoothed, expected, atol=1e-6)
    assert not torch.allclose(smoothed, F.cross_entropy(logits, targets, reduction="none"))


def test_label_smoothing_with_focal_gamma_zero_matches_torch(logits_targets):
    logits, targets = logits_targets
    got = TaskLoss(meta(), "focal", gamma=0.0, label_smoothing=0.2)(logits, targets)
    expected = F.cross_entropy(logits, targets, label_smoothing=0.2, reduction="none")
    assert torch.allclose(got, expected, atol=1e-6)


def test_multilabel_label_smoothing_moves_targets_towards_half(multilabel):
    logits, targets = multilabel
    got = TaskLoss(meta("multilabel", 4), "bce", label_smoothing=0.2)(logits, targets)
    expected = F.binary_cross_entropy_with_logits(logits, targets * 0.8 + 0.1, reduction="none")
    assert torch.allclose(got, expected.mean(1), atol=1e-6)


def test_multilabel_task_loss_is_bce_with_pos_weight(multilabel):
    logits, targets = multilabel
    pos_weight = [1.0, 2.0, 0.5, 4.0]
    got = TaskLoss(meta("multilabel", 4, pos_weight), "bce")(logits, targets)
    expected = F.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=torch.tensor(pos_weight), reduction="none"
    ).mean(1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert reduce_rows(got).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor(pos_weight))
    )


@pytest.mark.parametrize(
    "kind,loss,shape", [("multiclass", "ce", (0,)), ("multilabel", "bce", (0, 4))]
)
@pytest.mark.parametrize("expected_rows", [None, 8.0])
def test_task_loss_on_empty_selection_is_exact_zero_that_keeps_the_graph(
    kind, loss, shape, expected_rows
):
    head = torch.nn.Linear(5, 4 if kind == "multilabel" else 3)
    logits = head(torch.randn(0, 5))
    targets = torch.zeros(shape, dtype=torch.long if kind == "multiclass" else torch.float32)
    value = reduce_rows(TaskLoss(meta(kind, logits.shape[1]), loss)(logits, targets), expected_rows)
    assert value.item() == 0.0
    assert value.dim() == 0
    assert value.grad_fn is not None
    value.backward()
    assert head.weight.grad is not None
    assert torch.count_nonzero(head.weight.grad) == 0


def test_reduce_rows_sums_over_the_expected_rows_or_takes_the_batch_mean():
    rows = torch.tensor([1.0, 2.0, 3.0])
    assert reduce_rows(rows, 4.0).item() == pytest.approx(6.0 / 4.0)
    assert reduce_rows(rows).item() == pytest.approx(2.0)


# --- issue 22 item 2: a row's gradient does not depend on the rows that share its batch ----------

EMOTIONS = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]


def weighted_module(tiny_cfg, norm: str):
    """The three tasks with class weights: toxicity CE with label smoothing, sentiment focal,
    emotion BCE with pos_weight; every head's logits are handed in by `row_gradients`."""
    from mtl.model.module import MultiTaskModule

    cfg = tiny_cfg(
        f"weighting.task_loss_norm={norm}",
        "loss_weighting=equal",
        "tasks.toxicity.label_smoothing=0.1",
        "tasks.sentiment.loss=focal",
        "tasks.sentiment.gamma=2",
    )
    metas = {
        "toxicity": TaskMeta("toxicity", "binary", [0, 1], class_weights=[1.0, 3.0]),
        "emotion": TaskMeta(
            "emotion", "multilabel", EMOTIONS, class_weights=[0.5, 4, 1, 2, 3, 1, 6]
        ),
        "sentiment": TaskMeta("sentiment", "binary", [0, 1], class_weights=[0.5, 2.0]),
    }
    module = MultiTaskModule(cfg.to_dict(), {n: m.to_dict() for n, m in metas.items()})
    if norm == "expected":  # what on_train_start derives from the training loader
        module.expected_rows = {"toxicity": 4.0, "emotion": 4.0, "sentiment": 4.0}
    return module


def row_gradients(module, first_rows: dict, first_targets: dict, others: dict, seed: int) -> dict:
    """model_step on a batch whose first row of each task is given and whose other rows have the
    targets `others[task]`; returns the gradient of each task's first-row logits."""
    gen = torch.Generator().manual_seed(seed)
    logits, targets, index, start = {}, {}, {}, 0
    for name, row in first_rows.items():
        n = 1 + len(others[name])
        rest = torch.randn(n - 1, row.shape[-1], generator=gen) * 2
        logits[name] = torch.cat([row[None], rest]).requires_grad_()
        targets[name] = torch.cat([first_targets[name][None], others[name]])
        index[name] = torch.arange(start, start + n)
        start += n
    batch = {
        "input_ids": torch.zeros((start, 1), dtype=torch.long),
        "attention_mask": torch.ones((start, 1), dtype=torch.long),
        "index": index,
        "targets": targets,
    }
    module.forward = lambda *args, **kwargs: logits  # the heads' outputs, as leaves
    total, _ = module.model_step(batch, "train")
    total.backward()
    return {name: leaf.grad[0] for name, leaf in logits.items()}


@pytest.mark.parametrize("norm", ["expected", "batch"])
def test_a_rows_gradient_does_not_depend_on_the_class_mix_of_its_batch(tiny_cfg, norm):
    """Under the old Σwℓ/Σw reduction a positive toxicity row's gradient changed with how many
    positives shared its batch (issue 22 item 2); now each row counts as its class weight."""
    module = weighted_module(tiny_cfg, norm)
    gen = torch.Generator().manual_seed(0)
    first = {"toxicity": torch.randn(2, generator=gen), "emotion": torch.randn(7, generator=gen)}
    first["sentiment"] = torch.randn(2, generator=gen)
    target = {
        "toxicity": torch.tensor(1),
        "sentiment": torch.tensor(1),
        "emotion": torch.tensor([1.0, 0, 0, 1, 0, 0, 0]),
    }

    def batch_of(label: int) -> dict:  # three more rows of each task, all of one class
        return {
            "toxicity": torch.full((3,), label),
            "sentiment": torch.full((3,), label),
            "emotion": torch.full((3, 7), float(label)),
        }

    negatives = row_gradients(module, first, target, batch_of(0), seed=1)
    positives = row_gradients(module, first, target, batch_of(1), seed=2)
    for name in first:
        assert torch.count_nonzero(negatives[name]) > 0
        assert torch.allclose(negatives[name], positives[name], atol=1e-6), name
    if norm == "expected":  # nor on how many rows of its task the batch holds
        alone = row_gradients(module, first, target, {n: v[:0] for n, v in batch_of(0).items()}, 3)
        for name in first:
            assert torch.allclose(alone[name], negatives[name], atol=1e-6), name


def test_expected_norm_gives_each_row_its_class_weight_over_the_expected_rows(tiny_cfg):
    module = weighted_module(tiny_cfg, "expected")
    logits = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-0.4, 0.9]])
    targets = torch.tensor([1, 0, 1])
    heads = {"toxicity": logits, "emotion": torch.zeros(0, 7), "sentiment": torch.zeros(0, 2)}
    batch = {
        "targets": {"toxicity": targets, "emotion": torch.zeros(0, 7), "sentiment": torch.zeros(0)}
    }
    loss = module.task_losses(heads, batch, "train")  # the other tasks have no rows
    plain = F.cross_entropy(logits, targets, reduction="none", label_smoothing=0.1)
    expected = (torch.tensor([1.0, 3.0])[targets] * plain).sum() / 4.0
    assert loss["toxicity"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss["emotion"].item() == 0.0 and loss["sentiment"].item() == 0.0


# --- uncertainty weighting ----------------------------------------------------------------------


def losses_of(*values: float) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor(v, requires_grad=True) for name, v in zip(TASKS, values, strict=True)
    }


def test_uncertainty_weighting_matches_kendall_formula():
    weighting = UncertaintyWeighting(TASKS, clamp=5.0)
    s = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        weighting.log_vars.copy_(s)
    values = [0.7, 1.3, 0.2]
    total = weighting(losses_of(*values), dict.fromkeys(TASKS, True))
    expected = sum(math.exp(-float(s[k])) * values[k] + float(s[k]) for k in range(3))
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_uncertainty_log_vars_receive_gradients_of_the_formula():
    weighting = UncertaintyWeighting(TASKS)
    s = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        weighting.log_vars.copy_(s)
    values = [0.7, 1.3, 0.2]
    weighting(losses_of(*values), dict.fromkeys(TASKS, True)).backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    expected = torch.tensor([1 - math.exp(-float(s[k])) * values[k] for k in range(3)])
    assert torch.allclose(weighting.log_vars.grad, expected, atol=1e-6)


def test_uncertainty_task_loss_gradient_is_the_precision():
    weighting = UncertaintyWeighting(TASKS)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([1.0, 0.0, -1.0]))
    losses = losses_of(0.7, 1.3, 0.2)
    weighting(losses, dict.fromkeys(TASKS, True)).backward()
    for k, name in enumerate(TASKS):
        assert losses[name].grad.item() == pytest.approx(math.exp(-[1.0, 0.0, -1.0][k]))


def test_uncertainty_absent_task_adds_nothing_and_its_log_var_gets_zero_gradient():
    weighting = UncertaintyWeighting(TASKS)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.3, 0.8, -0.4]))
    present = {"toxicity": True, "emotion": False, "sentiment": True}
    # an absent task's loss is the graph-keeping zero; give it a non-zero value to be strict
    with_absent = weighting(losses_of(0.7, 5.0, 0.2), present)
    without = UncertaintyWeighting(["toxicity", "sentiment"])
    with torch.no_grad():
        without.log_vars.copy_(torch.tensor([0.3, -0.4]))
    reference = without(
        {"toxicity": torch.tensor(0.7), "sentiment": torch.tensor(0.2)},
        {"toxicity": True, "sentiment": True},
    )
    assert with_absent.item() == pytest.approx(reference.item(), rel=1e-6)
    with_absent.backward()
    grad = weighting.log_vars.grad
    assert grad is not None  # still in the graph (DDP needs every parameter used)
    assert grad[1].item() == 0.0
    assert grad[0].item() != 0.0 and grad[2].item() != 0.0


def test_uncertainty_all_tasks_absent_gives_zero_with_graph():
    weighting = UncertaintyWeighting(TASKS)
    total = weighting(losses_of(1.0, 1.0, 1.0), dict.fromkeys(TASKS, False))
    assert total.item() == 0.0
    total.backward()
    assert torch.count_nonzero(weighting.log_vars.grad) == 0


def test_uncertainty_reported_weights_use_the_bounded_log_vars():
    weighting = UncertaintyWeighting(TASKS, clamp=5.0)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([10.0, -10.0, 1.0]))
    weights = weighting.task_weights()
    assert weights["toxicity"] == pytest.approx(math.exp(-5))
    assert weights["emotion"] == pytest.approx(math.exp(5))
    assert weighting.extra_logs()["sigma/toxicity"] == pytest.approx(math.exp(2.5))
    weighting.project()  # after an optimizer step the parameter itself is brought back
    assert weighting.log_vars.tolist() == [5.0, -5.0, 1.0]


def test_uncertainty_log_vars_start_at_zero_giving_unit_weights():
    weighting = UncertaintyWeighting(TASKS)
    assert weighting.task_weights() == dict.fromkeys(TASKS, 1.0)
    assert weighting.log_vars.dim() == 1  # 1-D: excluded from weight decay


# --- equal / fixed / DWA ------------------------------------------------------------------------


def test_equal_weighting_is_the_plain_sum():
    weighting = FixedWeighting(TASKS)
    total = weighting(losses_of(0.7, 1.3, 0.2), dict.fromkeys(TASKS, True))
    assert total.item() == pytest.approx(2.2)
    assert weighting.task_weights() == dict.fromkeys(TASKS, 1.0)


def test_fixed_weighting_uses_the_given_weights_and_gradients():
    weighting = FixedWeighting(TASKS, {"toxicity": 2.0, "emotion": 0.5})
    losses = losses_of(0.7, 1.3, 0.2)
    total = weighting(losses, dict.fromkeys(TASKS, True))
    assert total.item() == pytest.approx(2 * 0.7 + 0.5 * 1.3 + 1.0 * 0.2)
    total.backward()
    assert losses["toxicity"].grad.item() == 2.0
    assert losses["emotion"].grad.item() == 0.5
    assert losses["sentiment"].grad.item() == 1.0


def test_build_weighting_reads_task_weights_from_config():
    cfg = load_config(DEFAULT_CONFIG, ["loss_weighting=fixed", "tasks.emotion.weight=3"])
    weighting = build_weighting(cfg)
    assert isinstance(weighting, FixedWeighting)
    assert weighting.task_weights() == {"toxicity": 1.0, "emotion": 3.0, "sentiment": 1.0}


@pytest.mark.parametrize(
    "method,cls",
    [
        ("uncertainty", UncertaintyWeighting),
        ("dwa", DWAWeighting),
        ("random", RandomWeighting),
        ("equal", FixedWeighting),
    ],
)
def test_build_weighting_picks_the_method(method, cls):
    cfg = load_config(DEFAULT_CONFIG, [f"loss_weighting={method}", "tasks.emotion.weight=3"])
    weighting = build_weighting(cfg)
    assert type(weighting) is cls
    if method == "equal":  # equal ignores tasks.<t>.weight
        assert weighting.task_weights()["emotion"] == 1.0


def test_dwa_uses_equal_weights_for_the_first_two_epochs():
    weighting = DWAWeighting(TASKS, temperature=2.0)
    assert weighting.task_weights() == dict.fromkeys(TASKS, 1.0)
    weighting.on_epoch_end({"toxicity": 1.0, "emotion": 2.0, "sentiment": 0.5})
    assert weighting.task_weights() == dict.fromkeys(TASKS, 1.0)


def test_dwa_weights_follow_k_softmax_of_loss_ratios_and_sum_to_k():
    temperature = 2.0
    weighting = DWAWeighting(TASKS, temperature=temperature)
    first = {"toxicity": 1.0, "emotion": 2.0, "sentiment": 0.5}
    second = {"toxicity": 0.5, "emotion": 1.8, "sentiment": 0.5}
    weighting.on_epoch_end(first)
    weighting.on_epoch_end(second)
    ratios = torch.tensor([second[n] / first[n] for n in TASKS])
    expected = 3 * torch.softmax(ratios / temperature, dim=0)
    got = torch.tensor([weighting.task_weights()[n] for n in TASKS])
    assert torch.allclose(got, expected, atol=1e-6)
    assert got.sum().item() == pytest.approx(3.0)
    # the loss that did not fall (sentiment, ratio 1.0) gets the largest weight, the one that
    # halved (toxicity, ratio 0.5) the smallest
    order = sorted(weighting.task_weights(), key=weighting.task_weights().get)
    assert order == ["toxicity", "emotion", "sentiment"]
    losses = losses_of(0.7, 1.3, 0.2)
    total = weighting(losses, dict.fromkeys(TASKS, True))
    assert total.item() == pytest.approx(float((got * torch.tensor([0.7, 1.3, 0.2])).sum()))


def test_dwa_uses_only_the_last_two_epochs():
    weighting = DWAWeighting(TASKS, temperature=1.0)
    for losses in (
        {"toxicity": 9.0, "emotion": 0.1, "sentiment": 3.0},
        {"toxicity": 1.0, "emotion": 1.0, "sentiment": 1.0},
        {"toxicity": 1.0, "emotion": 1.0, "sentiment": 1.0},
    ):
        weighting.on_epoch_end(losses)
    got = weighting.task_weights()
    assert all(w == pytest.approx(1.0) for w in got.values())


# --- random loss weighting (RLW) ----------------------------------------------------------------


def test_random_weighting_draws_k_softmax_of_a_normal_per_step_from_seed_and_step():
    import numpy as np

    weighting = RandomWeighting(TASKS, seed=5)
    all_present = dict.fromkeys(TASKS, True)
    drawn = []
    for step in range(3):
        losses = losses_of(0.7, 1.3, 0.2)
        total = weighting(losses, all_present)
        z = np.random.default_rng([5, step]).standard_normal(3)
        expected = 3 * np.exp(z) / np.exp(z).sum()
        got = [weighting.task_weights()[n] for n in TASKS]
        assert got == pytest.approx(expected.tolist())
        assert sum(got) == pytest.approx(3.0)  # they average 1, as equal weighting's do
        total.backward()
        assert [losses[n].grad.item() for n in TASKS] == pytest.approx(expected.tolist())
        drawn.append(got)
    assert drawn[0] != drawn[1] != drawn[2]  # fresh weights every step
    assert int(weighting.steps) == 3
    other_seed = RandomWeighting(TASKS, seed=6)
    other_seed(losses_of(0.7, 1.3, 0.2), all_present)
    assert [other_seed.task_weights()[n] for n in TASKS] != drawn[0]


def test_random_weighting_gives_absent_tasks_nothing_and_present_ones_mean_one():
    weighting = RandomWeighting(TASKS, seed=0)
    losses = losses_of(0.7, 1.3, 0.2)
    weighting(losses, {"toxicity": True, "emotion": False, "sentiment": True})
    weights = weighting.task_weights()
    assert weights["emotion"] == 0.0
    assert weights["toxicity"] + weights["sentiment"] == pytest.approx(2.0)
    weighting(losses_of(0.7, 1.3, 0.2), dict.fromkeys(TASKS, False))
    assert weighting.task_weights() == dict.fromkeys(TASKS, 0.0)


def test_random_weighting_validates_with_equal_weights_and_resumes_its_sequence():
    weighting = RandomWeighting(TASKS, seed=3)
    for _ in range(4):
        weighting(losses_of(0.7, 1.3, 0.2), dict.fromkeys(TASKS, True))
    weighting.eval()
    total = weighting(losses_of(0.7, 1.3, 0.2), dict.fromkeys(TASKS, True))
    assert total.item() == pytest.approx(2.2)
    assert int(weighting.steps) == 4  # validation does not advance the sequence
    weighting.train()
    resumed = RandomWeighting(TASKS, seed=3)
    resumed(losses_of(0.7, 1.3, 0.2), dict.fromkeys(TASKS, True))  # its own count is now 1
    # the step count travels in the checkpoint, nested in the LightningModule's state dict
    parent = torch.nn.ModuleDict({"weighting": resumed})
    parent.load_state_dict({"weighting.steps": weighting.state_dict()["steps"]})
    weighting(losses_of(0.7, 1.3, 0.2), dict.fromkeys(TASKS, True))
    resumed(losses_of(0.7, 1.3, 0.2), dict.fromkeys(TASKS, True))
    assert resumed.task_weights() == weighting.task_weights()
