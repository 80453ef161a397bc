"""The input pipeline: deterministic training streams, ordered passes, and placement on a mesh.

The training stream is a pure function of (seed, step). Epoch `e` visits the training split
in the order of a permutation drawn from `fold_in(PRNGKey(seed), e)`; step `s` of the run is
batch `s % steps_per_epoch` of epoch `s // steps_per_epoch`, so a resumed run sees exactly the
batches it would have seen. Augmentation is keyed by (seed, epoch, example index), never by
device or thread. Grain assembles batches in worker threads.

Each process loads only its rows of the global batch: the rows that the data sharding puts on
its devices, whatever their order in the mesh (`local_rows`). `to_global` assembles the global
`jax.Array` sharded along the mesh's "data" axis from those rows.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from protojax.data.base import Split
from protojax.errors import DataError, UsageError

_STATS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "symmetric": ((0.5,), (0.5,)),
    # FLINT's CIFAR-10 statistics (jayneelparekh/FLINT flint.py).
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
}


def normalize(images: np.ndarray, mode: str) -> np.ndarray:
    """Maps images `[..., C]` in [0, 1] to the model's input range (see `default_config`)."""
    if mode == "none":
        return images
    if mode not in _STATS:
        raise UsageError(
            f"Unknown data.normalization '{mode}'; use none, symmetric, imagenet or cifar10."
        )
    mean, std = (np.asarray(v, np.float32) for v in _STATS[mode])
    return (images - mean) / std


def denormalize(images: np.ndarray, mode: str) -> np.ndarray:
    """Inverse of `normalize`: model inputs back to [0, 1] for display."""
    if mode == "none":
        return images
    mean, std = (np.asarray(v, np.float32) for v in _STATS[mode])
    return images * std + mean


_PERM_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    cpu = jax.local_devices(backend="cpu")[0]
    with jax.default_device(cpu):
        key = jax.random.fold_in(jax.random.key(seed), epoch)
        return np.asarray(jax.random.permutation(key, n))


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The visiting order `[n]` of epoch `epoch`; identical on every platform and host."""
    with _PERM_LOCK:
        return _permutation(seed, epoch, n)


def device_rows(global_batch: int, mesh: Mesh, devices) -> np.ndarray:
    """The rows `[n]` of a global batch sharded along `mesh`'s "data" axis that `devices`
    hold, ascending: the order `jax.make_array_from_process_local_data` reads them in."""
    size = mesh.shape["data"]
    if global_batch % size:
        raise UsageError(
            f"A batch of {global_batch} does not divide by the {size} devices of the mesh; "
            "choose a multiple (data.batch_size, data.eval_batch_size)."
        )
    indices = data_sharding(mesh).devices_indices_map((global_batch,))
    starts = sorted({indices[device][0].indices(global_batch)[0] for device in devices})
    per_device = global_batch // size
    return np.concatenate([np.arange(start, start + per_device) for start in starts])


def local_rows(global_batch: int, mesh: Mesh | None = None) -> np.ndarray:
    """The rows `[n]` of a global batch that this process loads for `mesh`. None: every row
    where there is one process, else a mesh over `jax.devices()` as `make_data_mesh()` builds."""
    if mesh is None:
        if jax.process_count() == 1:
            return np.arange(global_batch)
        mesh = Mesh(np.asarray(jax.devices()), ("data",))
    index = jax.process_index()
    mine = [device for device in mesh.devices.flat if device.process_index == index]
    return device_rows(global_batch, mesh, mine)


def augments(augment) -> bool:
    """Whether `data.augment` changes any training image (a method that caches features of
    un-augmented images checks it)."""
    return augment is not None and any(
        [
            augment.crop_padding,
            augment.hflip,
            augment.rotation_degrees,
            augment.get("augmentor_mix"),
            augment.color_jitter,
        ]
    )


def _augment(batch: dict, *, seed: int, epoch: int, augment) -> dict:
    if not augments(augment):
        return batch
    from protojax.data.augment import augment_batch

    batch["image"] = augment_batch(
        batch["image"], batch["index"], seed=seed, epoch=epoch, config=augment
    )
    return batch


def _finish(batch: dict, normalization: str) -> dict:
    batch["image"] = normalize(batch["image"], normalization).astype(np.float32)
    batch["label"] = batch["label"].astype(np.int32)
    batch["index"] = batch["index"].astype(np.int32)
    return batch


def steps_per_epoch(split: Split, batch_size: int, *, drop_last: bool = True) -> int:
    """Training steps per epoch: full batches only (the remainder is dropped), or with
    `drop_last=False` one more for a partial last batch."""
    steps = len(split) // batch_size if drop_last else -(-len(split) // batch_size)
    if steps == 0:
        raise DataError(
            f"The training split has {len(split)} examples, fewer than one batch of "
            f"{batch_size}; lower data.batch_size."
        )
    return steps


def train_batches(
    split: Split,
    *,
    seed: int,
    batch_size: int,
    start_step: int,
    end_step: int,
    normalization: str = "none",
    augment=None,
    num_workers: int = 2,
    mesh: Mesh | None = None,
    drop_last: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of the training batches of steps `[start_step, end_step)`, for
    `mesh` (see `local_rows`).

    Yields dicts with `image [b,H,W,C] float32`, `label [b] int32`, `index [b] int32`,
    `valid [b] bool` and the source's extra fields, b = batch_size / processes. With
    `drop_last` (the default) an epoch is its full batches, every row valid; otherwise an
    epoch's last, partial batch is kept and padded to the full size with copies of its first
    example whose `valid` is false, so that shapes stay static.
    """
    import grain

    n = len(split)
    per_epoch = steps_per_epoch(split, batch_size, drop_last=drop_last)
    rows = local_rows(batch_size, mesh)

    def load(step: int) -> dict[str, np.ndarray]:
        epoch, position = divmod(step, per_epoch)
        order = epoch_permutation(seed, epoch, n)
        chunk = order[position * batch_size : (position + 1) * batch_size]
        valid = np.arange(batch_size) < len(chunk)
        padded = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0])])
        batch = split.get_batch(padded[rows])
        batch = _augment(batch, seed=seed, epoch=epoch, augment=augment)
        batch["valid"] = valid[rows]
        return _finish(batch, normalization)

    if end_step <= start_step:
        return iter(())
    dataset = grain.MapDataset.range(start_step, end_step).map(load)
    options = grain.ReadOptions(
        num_threads=max(1, num_workers), prefetch_buffer_size=max(2, 2 * num_workers)
    )
    return iter(dataset.to_iter_dataset(options))


def ordered_batches(
    split: Split,
    *,
    batch_size: int,
    normalization: str = "none",
    indices: np.ndarray | None = None,
    mesh: Mesh | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """An ordered, non-repeating pass over `split` (or over `indices` of it).

    Every example appears exactly once; the last batch is padded with copies of the first
    example whose `valid` is false. Yields this process's rows of each global batch for
    `mesh` (see `local_rows`).
    """
    order = np.arange(len(split)) if indices is None else np.asarray(indices)
    if len(order) == 0:
        return
    rows = local_rows(batch_size, mesh)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        valid = np.zeros(batch_size, bool)
        valid[: len(chunk)] = True
        padded = np.concatenate([chunk, np.full(batch_size - len(chunk), order[0])])
        local = padded[rows]
        batch = split.get_batch(local)
        batch["valid"] = valid[rows]
        yield _finish(batch, normalization)


def collect(
    split: Split,
    fn,
    *,
    batch_size: int,
    normalization: str = "none",
    indices: np.ndarray | None = None,
):
    """`fn(batch)` over a single-process `ordered_batches` pass, its rows concatenated as
    NumPy, padding rows dropped: `RunContext.collect` outside a run (a notebook, a launcher).

    Args:
      fn: `batch -> pytree of [B, ...]`; the batch's arrays are `jax.Array`s.
    """
    parts = []
    for batch in ordered_batches(
        split, batch_size=batch_size, normalization=normalization, indices=indices
    ):
        valid = batch["valid"]
        rows = fn({k: jax.numpy.asarray(v) for k, v in batch.items()})
        parts.append(jax.tree.map(lambda x, valid=valid: np.asarray(x)[valid], rows))
    return jax.tree.map(lambda *r: np.concatenate(r), *parts)


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's rows (`local_rows` for `mesh`) into global arrays sharded
    along the "data" axis."""
    sharding = data_sharding(mesh)
    # The data mesh is 1-D and each of its devices holds an equal share of the batch.
    local_devices = len(sharding.addressable_devices)
    out = {}
    for key, value in batch.items():
        global_shape = (value.shape[0] * mesh.size // local_devices, *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
