"""Compile time of protopnet_digits' train steps: one program per phase index (the engine
before compiled steps were keyed by their definition) against one per definition (now).

    JAX_COMPILATION_CACHE_DIR= python benchmarks/compile_reuse.py EPOCHS

EPOCHS=15 is the config as shipped (one push); 29 adds a second push, so the joint and
last-layer phases are revisited.
"""

import sys
import time

from protojax import config as config_lib
from protojax.data import load_dataset, pipeline
from protojax.methods import build_method
from protojax.train import build_train_step, initial_state, make_data_mesh
from protojax.train.loop import _step_key

config = config_lib.load_config("protopnet_digits")
config.train.epochs = int(sys.argv[1])
dataset = load_dataset(config.data)
method = build_method(config, dataset)
mesh = make_data_mesh()
per_epoch = pipeline.steps_per_epoch(dataset.split("train"), config.data.batch_size)
state, plan = initial_state(method, config, dataset, mesh, per_epoch)
batch = next(
    iter(
        pipeline.ordered_batches(
            dataset.split("train"),
            batch_size=config.data.batch_size,
            normalization=config.data.normalization,
            mesh=mesh,
        )
    )
)
batch = pipeline.to_global(batch, mesh)
times, keys = {}, []
for phase in plan.phases:
    if phase.epochs == 0:
        continue
    key = _step_key(phase)
    keys.append(phase.name)
    if key not in times:
        start = time.perf_counter()
        build_train_step(method, phase, plan, mesh, config).compile(state, batch)
        times[key] = (phase.name, time.perf_counter() - start)
per_name = {name: t for name, t in times.values()}
before = sum(per_name[n] for n in keys)
after = sum(t for _, t in times.values())
print(f"phases with steps: {len(keys)} ({', '.join(keys)}); distinct programs: {len(times)}")
print("compile s per program:", {n: round(t, 2) for n, t in per_name.items()})
print(
    f"compile time, one program per phase index (before): {before:.1f} s; "
    f"per definition (now): {after:.1f} s; saved {before - after:.1f} s"
)
