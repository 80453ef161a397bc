"""Measures a config's train step and inference speed on synthetic batches.

  python -m experiments.benchmark --config=NAME [--steps=N] [--batch_size=B] [--phase=NAME]
  python -m experiments.benchmark --config=NAME --pipeline   # the input pipeline alone

Prints one JSON line: train-step and eval images/s (the median over timed steps after
warm-up, each synchronised with the device), compile seconds, peak memory, device kind, jax
version and precision. It needs only jax, flax, optax, orbax and chex: the data is synthetic
with the dataset's shape, so neither the dataset nor grain, tensorflow_datasets, scikit-learn
or ml_collections has to be present.
"""

from __future__ import annotations

import json
import resource
import statistics
import time

from absl import flags

from experiments import cli
from protojax.errors import UsageError

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_integer("batch_size", 0, "Global batch size (default: the config's).")
flags.DEFINE_string("phase", "", "Phase whose step is timed (default: the first that trains).")
flags.DEFINE_bool(
    "pipeline", False, "Time the input pipeline alone on the real dataset (needs the data)."
)


def synthetic_batch(dataset, batch_size: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w, c = dataset.image_shape
    return {
        "image": rng.uniform(0, 1, (batch_size, h, w, c)).astype(np.float32),
        "label": rng.integers(0, dataset.num_classes, batch_size).astype(np.int32),
        "index": np.arange(batch_size, dtype=np.int32),
        "valid": np.ones(batch_size, bool),
    }


def _median_seconds(fn, steps: int) -> float:
    import jax

    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_memory() -> tuple[int, str]:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device_peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host_max_rss"


def benchmark(config, *, steps: int, warmup: int, phase_name: str = "") -> dict:
    import jax

    from protojax.data import pipeline
    from protojax.data.specs import describe
    from protojax.methods import build_method
    from protojax.train import build_train_step, initial_state, make_data_mesh

    dataset = describe(config.data)
    method = build_method(config, dataset)
    mesh = make_data_mesh()
    batch_size = config.data.batch_size
    if batch_size % mesh.devices.size:
        raise UsageError(f"--batch_size={batch_size} must divide by {mesh.devices.size} devices.")
    state, plan = initial_state(method, config, dataset, mesh, steps_per_epoch=100)
    trainable = [i for i, p in enumerate(plan.phases) if p.epochs > 0]
    if phase_name:
        trainable = [i for i in trainable if plan.phases[i].name == phase_name]
        if not trainable:
            names = sorted({p.name for p in plan.phases})
            raise UsageError(f"No phase named '{phase_name}'; phases are {', '.join(names)}.")
    phase = plan.phases[trainable[0]]
    step = build_train_step(method, phase, plan, mesh, config)
    batch = pipeline.to_global(synthetic_batch(dataset, batch_size), mesh)

    start = time.perf_counter()
    compiled = step.compile(state, batch)
    compile_seconds = time.perf_counter() - start
    holder = {"state": state}

    def train_step():
        holder["state"], metrics, _ = compiled(holder["state"], batch)
        return metrics

    for _ in range(warmup):
        jax.block_until_ready(train_step())
    train_seconds = _median_seconds(train_step, steps)

    predict = jax.jit(method.predict)
    variables = holder["state"].variables
    start = time.perf_counter()
    jax.block_until_ready(predict(variables, batch["image"]))
    eval_compile = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(predict(variables, batch["image"]))
    eval_seconds = _median_seconds(lambda: predict(variables, batch["image"]), steps)
    peak, peak_kind = _peak_memory()
    device = jax.devices()[0]
    return {
        "method": config.method,
        "phase": phase.name,
        "batch_size": batch_size,
        "image_shape": list(dataset.image_shape),
        "train_images_per_sec": round(batch_size / train_seconds, 1),
        "train_step_ms_median": round(1000 * train_seconds, 2),
        "eval_images_per_sec": round(batch_size / eval_seconds, 1),
        "compile_s": round(compile_seconds, 2),
        "eval_compile_s": round(eval_compile, 2),
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "device_kind": device.device_kind,
        "platform": device.platform,
        "num_devices": mesh.devices.size,
        "jax_version": jax.__version__,
        "precision": config.train.precision,
        "timed_steps": steps,
    }


def pipeline_throughput(config, *, steps: int) -> dict:
    """Images/s of the training input pipeline alone (load, augment, normalise, batch)."""
    from protojax.data import load_dataset, pipeline

    dataset = load_dataset(config.data)
    split = dataset.split("train")
    batches = pipeline.train_batches(
        split,
        seed=config.seed,
        batch_size=config.data.batch_size,
        start_step=0,
        end_step=steps + 1,
        normalization=config.data.normalization,
        augment=config.data.augment,
        num_workers=config.data.num_workers,
    )
    next(batches)  # the first batch includes the split's lazy set-up
    start = time.perf_counter()
    count = sum(len(batch["label"]) for batch in batches)
    seconds = time.perf_counter() - start
    return {
        "pipeline_images_per_sec": round(count / seconds, 1),
        "batch_size": config.data.batch_size,
        "image_shape": list(dataset.image_shape),
        "num_workers": config.data.num_workers,
        "augment": {k: config.data.augment[k] for k in config.data.augment},
        "timed_steps": steps,
    }


def main(argv: list[str]) -> None:
    config, name = cli.load_config(*cli.parse_flags(argv))
    if FLAGS.steps < 1 or FLAGS.warmup < 0 or FLAGS.batch_size < 0:
        raise UsageError(
            "--steps must be ≥ 1, --warmup ≥ 0 and --batch_size ≥ 0 (0: the config's)."
        )
    if FLAGS.batch_size:
        from protojax.config import set_value

        set_value(config, "data.batch_size", FLAGS.batch_size)
    from protojax.train.loop import validate_config

    validate_config(config)
    if FLAGS.pipeline:
        result = pipeline_throughput(config, steps=FLAGS.steps)
    else:
        result = benchmark(config, steps=FLAGS.steps, warmup=FLAGS.warmup, phase_name=FLAGS.phase)
    result = {"config": name, **result}
    print(json.dumps(result))


if __name__ == "__main__":
    cli.run_launcher(main)
