"""Figures every run writes: training curves from metrics.jsonl."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from protojax.train.workdir import FIGURES, read_metrics  # noqa: E402


def training_curves(workdir: pathlib.Path) -> pathlib.Path:
    """Loss per logged step and validation accuracy per epoch, phases shaded."""
    records = read_metrics(workdir)
    train = sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r["step"])
    epochs = sorted((r for r in records if r.get("kind") == "epoch"), key=lambda r: r["step"])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1.2)
        ax_loss.set_yscale("log" if min(r["loss"] for r in train) > 0 else "linear")
    ax_loss.set(xlabel="step", ylabel="training loss", title="Loss")
    val = [r for r in epochs if "val_accuracy" in r]
    if val:
        ax_acc.plot([r["step"] for r in val], [r["val_accuracy"] for r in val], "o-", ms=3)
    ax_acc.set(xlabel="step", ylabel="accuracy", title="Validation accuracy", ylim=(0, 1.01))
    # Shade alternate phases so that multi-stage schedules are readable.
    spans, start, current = [], 0, None
    for record in train + epochs:
        if record["phase"] != current:
            if current is not None:
                spans.append((start, record["step"], current))
            start, current = record["step"], record["phase"]
    if current is not None and (train or epochs):
        spans.append((start, max(r["step"] for r in train + epochs), current))
    for i, (lo, hi, name) in enumerate(spans):
        for ax in (ax_loss, ax_acc):
            if i % 2:
                ax.axvspan(lo, hi, color="0.92", zorder=0)
        ax_acc.text((lo + hi) / 2, 0.03, name, ha="center", fontsize=7, color="0.3")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = workdir / FIGURES / "training_curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
