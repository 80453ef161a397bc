"""ProtoPNet's loss pieces against loops, its official stage schedule and learning rates, its
initialisation, the trainable groups of each stage and the backbone-weights contract."""

import jax
import numpy as np
import pytest

from protojax.config import load_config, set_value
from protojax.data.specs import describe
from protojax.errors import CheckpointError
from protojax.methods import build_method
from protojax.nn.add_on import add_on_widths
from protojax.nn.weights import save_variables
from protojax.prototypes.costs import (
    average_separation,
    cluster_cost,
    l1_wrong_class,
    separation_cost,
)
from protojax.prototypes.schedule import stage_plan
from protojax.runs import train as train_run
from protojax.train import optim

B, P, K = 7, 9, 3


@pytest.fixture(scope="module")
def pieces():
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 5, (B, P)).astype(np.float32)
    labels = rng.integers(0, K, B).astype(np.int32)
    classes = (np.arange(P) // 3).astype(np.int32)
    active = np.ones(P, bool)
    active[[0, 4, 5]] = False  # class 1 keeps one prototype (3)
    valid = np.ones(B, bool)
    valid[-1] = False
    kernel = rng.normal(size=(P, K)).astype(np.float32)
    return d, labels, classes, active, valid, kernel


def naive(d, labels, classes, active, valid, own: bool):
    values = []
    for b in range(B):
        if not valid[b]:
            continue
        chosen = [d[b, j] for j in range(P) if active[j] and ((classes[j] == labels[b]) == own)]
        if chosen:
            values.append(min(chosen))
    return np.mean(values)


@pytest.mark.parametrize("use_active", [False, True])
def test_cluster_and_separation_match_loops(pieces, use_active):
    d, labels, classes, active, valid, _ = pieces
    mask = active if use_active else np.ones(P, bool)
    arg = active if use_active else None
    np.testing.assert_allclose(
        cluster_cost(d, labels, classes, arg, valid=valid),
        naive(d, labels, classes, mask, valid, own=True),
        rtol=1e-6,
    )
    sep = separation_cost(d, labels, classes, arg, valid=valid)
    np.testing.assert_allclose(sep, naive(d, labels, classes, mask, valid, own=False), rtol=1e-6)
    assert sep > 0
    per_row = [
        np.mean([d[b, j] for j in range(P) if mask[j] and classes[j] != labels[b]])
        for b in range(B)
        if valid[b]
    ]
    np.testing.assert_allclose(
        average_separation(d, labels, classes, arg, valid=valid), np.mean(per_row), rtol=1e-6
    )


def test_official_max_dist_form_of_cluster_cost(pieces):
    d, labels, classes, *_ = pieces
    max_dist = 128.0  # the official code's D·1·1 masking trick
    own = (classes[None, :] == labels[:, None]).astype(np.float32)
    official = np.mean(max_dist - np.max((max_dist - d) * own, axis=1))
    np.testing.assert_allclose(cluster_cost(d, labels, classes), official, rtol=1e-5)


def test_l1_wrong_class_matches_a_loop(pieces):
    *_, classes, active, _, kernel = pieces
    for mask in (None, active):
        expected = sum(
            abs(kernel[j, k])
            for j in range(P)
            for k in range(K)
            if k != classes[j] and (mask is None or mask[j])
        )
        np.testing.assert_allclose(l1_wrong_class(kernel, classes, mask), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="one class per prototype"):
        l1_wrong_class(kernel.T, classes)


def test_bottleneck_widths_follow_the_official_loop():
    assert add_on_widths("regular", 512, 128) == [128]
    assert add_on_widths("bottleneck", 512, 128) == [256, 128]
    assert add_on_widths("bottleneck", 2048, 128) == [1024, 512, 256, 128]
    assert add_on_widths("bottleneck", 300, 128) == [150, 128]
    assert add_on_widths("bottleneck", 64, 128) == [128]


@pytest.fixture(scope="module")
def cub():
    config = load_config("protopnet_cub")
    set_value(config, "model.passes_per_epoch", 1)
    return config


def test_official_stage_plan(cub):
    stages = stage_plan(cub.model, 31)
    assert [(s.kind, s.epochs, s.push_after) for s in stages] == [
        ("warm", 5, False),
        ("joint", 6, True),  # epochs 5..10, push after epoch 10
        ("last", 20, False),
        ("joint", 10, True),  # epochs 11..20
        ("last", 20, False),
        ("joint", 10, True),  # epochs 21..30
        ("last", 20, False),
    ]
    set_value(cub, "model.prune.enabled", True)
    try:
        assert stage_plan(cub.model, 31)[-1].kind == "prune_last"
        with pytest.raises(ValueError, match="Pruning follows a push"):
            stage_plan(cub.model, 25)
    finally:
        set_value(cub, "model.prune.enabled", False)


def test_joint_learning_rates_follow_the_official_steplr(cub):
    set_value(cub, "train.epochs", 31)
    method = build_method(cub, describe(cub.data))
    phases = method.phases(cub)
    joint = [p for p in phases if p.name == "joint"]
    # One optimizer per stage kind, so that Adam's state persists across revisits.
    assert all(p.optimizer == p.name for p in phases)
    assert {p.name for p in phases} == {"warm", "joint", "last"}
    assert len(joint) == 3 and all(p.trainable == joint[0].trainable for p in joint)
    steps_per_epoch = 3
    # Joint epochs counted across all joint phases (the optimizer state persists).
    ours = [
        optim.learning_rates(joint[0], steps_per_epoch, e * steps_per_epoch + 1) for e in range(26)
    ]
    base = {"backbone/.*": 1e-4, "add_on/.*": 3e-3, "prototypes": 3e-3}
    # main.py: StepLR(step_size=5, gamma=0.1).step() before each joint epoch (cross-checked
    # against torch below).
    hand = [0.1 ** ((e + 1) // 5) for e in range(26)]
    np.testing.assert_allclose(hand[:10], [1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.01])
    for epoch, rates in enumerate(ours):
        for regex, lr in base.items():
            np.testing.assert_allclose(rates[regex], lr * hand[epoch], rtol=1e-6)


@pytest.mark.slow
def test_the_hand_written_sequence_is_torch_steplr_stepped_before_each_epoch():
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.1)
    official = []
    for _ in range(26):
        scheduler.step()  # before the epoch, as main.py (PyTorch warns: ProtoPNet issue #22)
        official.append(opt.param_groups[0]["lr"])
        opt.step()
    np.testing.assert_allclose([0.1 ** ((e + 1) // 5) for e in range(26)], official, rtol=1e-12)


def test_stage_trainables_weight_decay_and_batch_stats(cub):
    set_value(cub, "train.epochs", 11)
    method = build_method(cub, describe(cub.data))
    phases = {p.name: p for p in method.phases(cub)}
    rules = {name: dict(p.trainable) for name, p in phases.items()}
    # The last layer is in neither the warm nor the joint optimizer.
    assert set(rules["warm"]) == {"add_on/.*", "prototypes"}
    assert set(rules["joint"]) == {"backbone/.*", "add_on/.*", "prototypes"}
    assert set(rules["last"]) == {"last_layer/.*"}
    # Coupled L2 (torch Adam) on backbone and add-ons, none on prototypes or last layer.
    for name, regex in [("warm", "add_on/.*"), ("joint", "backbone/.*"), ("joint", "add_on/.*")]:
        assert rules[name][regex].weight_decay == 1e-3 and not rules[name][regex].decoupled
    assert rules["joint"]["prototypes"].weight_decay == 0
    assert rules["last"]["last_layer/.*"].weight_decay == 0
    assert all(p.update_batch_stats for p in phases.values())
    assert phases["joint"].after == method.push
    # The intended behaviour, switched on by the flags.
    for key in (
        "model.train_last_layer_before_push",
        "model.decoupled_weight_decay",
    ):
        set_value(cub, key, True)
    set_value(cub, "model.frozen_stages_update_batch_stats", False)
    try:
        phases = {p.name: p for p in method.phases(cub)}
        assert "last_layer/.*" in dict(phases["warm"].trainable)
        assert "last_layer/.*" in dict(phases["joint"].trainable)
        assert dict(phases["joint"].trainable)["backbone/.*"].decoupled
        assert not phases["warm"].update_batch_stats and not phases["last"].update_batch_stats
        assert phases["joint"].update_batch_stats
    finally:
        for key in ("model.train_last_layer_before_push", "model.decoupled_weight_decay"):
            set_value(cub, key, False)
        set_value(cub, "model.frozen_stages_update_batch_stats", True)


def test_missing_backbone_weights_stop_with_the_command(tmp_path):
    config = load_config("protopnet_digits")
    set_value(config, "data.image_size", 8)
    method = build_method(config, describe(config.data))
    variables = jax.eval_shape(method.init, jax.random.key(0), {"image": np.zeros((2, 8, 8, 1))})
    m = config.model.prototypes_per_class
    assert variables["params"]["prototypes"].shape == (10 * m, config.model.prototype_dim)
    assert variables["params"]["last_layer"]["kernel"].shape == (10 * m, 10)
    # No weights file configured: the backbone starts from scratch.
    assert method.load_pretrained(variables) is variables
    set_value(config, "model.backbone_weights", str(tmp_path / "resnet.npz"))
    method = build_method(config, describe(config.data))
    with pytest.raises(CheckpointError, match=r"resnet\.npz.*convert_weights.*allow_random_init"):
        method.load_pretrained(variables)
    # A donor workdir that was never trained names the training command.
    set_value(config, "model.backbone_weights", str(tmp_path / "blackbox_run"))
    method = build_method(config, describe(config.data))
    with pytest.raises(CheckpointError, match=r"No trained run at .*blackbox_run.*--workdir="):
        method.load_pretrained(variables)
    set_value(config, "model.backbone_weights", str(tmp_path / "resnet.npz"))
    set_value(config, "model.allow_random_init", True)
    method = build_method(config, describe(config.data))
    assert method.load_pretrained(variables) is variables

    # A converted file is loaded into the backbone scope; the rest keeps its initialisation.
    rng = np.random.default_rng(0)
    fresh = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), variables)
    backbone = {c: fresh[c]["backbone"] for c in ("params", "batch_stats")}
    converted = jax.tree.map(lambda a: a + 1, backbone)
    save_variables(tmp_path / "resnet.npz", converted)
    loaded = method.load_pretrained(fresh)
    for collection in ("params", "batch_stats"):
        for got, want in zip(
            jax.tree.leaves(loaded[collection]["backbone"]), jax.tree.leaves(converted[collection])
        ):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded["params"]["prototypes"], fresh["params"]["prototypes"])


def test_backbone_seeded_from_a_black_box_workdir(tmp_path):
    """`model.backbone_weights` may name a trained black box's workdir (same backbone)."""
    from protojax.data.digits import load_digits
    from protojax.train import make_data_mesh
    from protojax.train.loop import restore_variables

    digits = load_digits(image_size=8)
    donor_config = load_config("blackbox_digits")
    for key, value in [
        ("data.image_size", 8),
        ("train.stop_after_steps", 2),
        ("train.progress", False),
        ("model.backbone", load_config("protopnet_digits").model.backbone),
    ]:
        set_value(donor_config, key, value)
    train_run(donor_config, tmp_path / "bb", make_data_mesh(jax.devices()[:1]), dataset=digits)
    donor = restore_variables(
        build_method(donor_config, digits), donor_config, digits, tmp_path / "bb"
    )

    config = load_config("protopnet_digits")
    set_value(config, "data.image_size", 8)
    set_value(config, "model.backbone_weights", str(tmp_path / "bb"))
    method = build_method(config, digits)
    fresh = method.init(jax.random.key(0), {"image": np.zeros((2, 8, 8, 1), np.float32)})
    seeded = method.load_pretrained(fresh)
    for collection in ("params", "batch_stats"):
        jax.tree.map(
            np.testing.assert_array_equal,
            seeded[collection]["backbone"],
            donor[collection]["backbone"],
        )
    np.testing.assert_array_equal(seeded["params"]["prototypes"], fresh["params"]["prototypes"])
