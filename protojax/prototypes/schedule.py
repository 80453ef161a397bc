"""The stages of push-based part-prototype training, as ProtoPNet's official `main.py`
schedules them: warm-up epochs, joint epochs, and after every push epoch a push followed by
epochs of the last layer alone; optionally pruning (`prune.py`) and its fine-tuning. A method
turns each stage into a `Phase` with its own optimizers (`protojax.methods.protopnet`)."""

from __future__ import annotations

from typing import NamedTuple

from protojax.errors import UsageError


class Stage(NamedTuple):
    """One run of consecutive epochs of a kind (`warm`, `joint`, `last`, `prune_last`),
    counted in ProtoPNet epochs, and whether a push (or pruning) follows it."""

    kind: str
    epochs: int
    push_after: bool = False
    prune_after: bool = False


def stage_plan(model, epochs: int) -> list[Stage]:
    """ProtoPNet's official schedule: warm, joint, and after every push epoch the last-layer
    epochs; with `model.prune.enabled`, pruning after the last of them and its fine-tuning.

    Args:
      model: the `config.model` section: `warm_epochs`, `push_start`, `push_every`,
        `last_layer_epochs` and `prune` (`enabled`, `last_layer_epochs`).
      epochs: ProtoPNet epochs (warm + joint; last-layer epochs come on top).
    """
    if epochs < 1:
        raise UsageError(f"train.epochs must be at least 1, got {epochs}.")
    stages: list[Stage] = []
    for epoch in range(epochs):
        kind = "warm" if epoch < model.warm_epochs else "joint"
        if stages and stages[-1].kind == kind and not stages[-1].push_after:
            stages[-1] = stages[-1]._replace(epochs=stages[-1].epochs + 1)
        else:
            stages.append(Stage(kind, 1))
        if epoch >= model.push_start and epoch % model.push_every == 0:
            stages[-1] = stages[-1]._replace(push_after=True)
            stages.append(Stage("last", model.last_layer_epochs))
    if model.prune.enabled:
        if stages[-1].kind != "last":
            raise UsageError(
                "Pruning follows a push and its last-layer epochs, but the run ends with "
                f"{stages[-1].kind} epochs; set train.epochs to push_start + n·push_every + 1."
            )
        stages[-1] = stages[-1]._replace(prune_after=True)
        stages.append(Stage("prune_last", model.prune.last_layer_epochs))
    return stages
