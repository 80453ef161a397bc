"""Image folders: class order, seeded stratified splits, resizing, and errors naming paths."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protojax.data import default_config, load_dataset
from protojax.errors import DataError

COUNTS = {"zebra": 10, "ant": 6, "Moth": 8}  # sorted by name: Moth, ant, zebra


def write_image(path: Path, seed: int, size=(9, 7), mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode).save(path)


def make_tree(root: Path, splits=("train",), counts=COUNTS):
    seed = 0
    for split in splits:
        for name, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                seed += 1
                suffix = (".png", ".PNG", ".jpg", ".JPEG")[i % 4]
                mode = "L" if i == 1 else "RGB"
                write_image(folder / f"img{i:02d}{suffix}", seed, size=(9 + i, 7), mode=mode)
            (folder / "notes.txt").write_text("not an image")
    return root


def folder_config(root, **overrides):
    config = default_config()
    config.name = f"folder:{root}"
    config.image_size = 8
    config.update(overrides)
    return config


def all_paths(split):
    return [str(p) for p in split.paths]


def test_classes_sorted_and_stratified_split(tmp_path):
    root = make_tree(tmp_path / "data")
    dataset = load_dataset(folder_config(root, val_fraction=0.25, test_fraction=0.25))
    assert dataset.class_names == ("Moth", "ant", "zebra")
    assert dataset.image_shape == (8, 8, 3) and dataset.num_classes == 3
    splits = [dataset.split(name) for name in ("train", "val", "test")]
    paths = [all_paths(s) for s in splits]
    every = sorted(str(p) for p in root.rglob("img*"))
    assert sorted(sum(paths, [])) == every  # a partition of every image
    assert len(set(sum(paths, []))) == len(every)
    for split in splits:
        for path, label in zip(split.paths, split.labels):
            assert Path(path).parent.name == dataset.class_names[label]
    # Stratified: each class loses about a quarter to test, then a quarter of the rest to val.
    counts = {n: np.bincount(s.labels, minlength=3) for n, s in zip(("tr", "va", "te"), splits)}
    for k, total in enumerate((8, 6, 10)):
        assert abs(counts["te"][k] - 0.25 * total) <= 1
        assert abs(counts["va"][k] - 0.25 * (total - counts["te"][k])) <= 1
        assert counts["tr"][k] >= 3
    again = load_dataset(folder_config(root, val_fraction=0.25, test_fraction=0.25))
    assert all_paths(again.split("val")) == paths[1]
    relative = load_dataset(
        folder_config("data", data_dir=str(tmp_path), val_fraction=0.25, test_fraction=0.25)
    )
    assert all_paths(relative.split("train")) == paths[0]
    reseeded = load_dataset(
        folder_config(root, val_fraction=0.25, test_fraction=0.25, split_seed=1)
    )
    assert all_paths(reseeded.split("test")) != paths[2]


def test_images_decoded_resized_and_rgb(tmp_path):
    root = make_tree(tmp_path / "data", splits=("train", "val", "test"))
    dataset = load_dataset(folder_config(root, image_size=5))
    split = dataset.split("test")
    assert len(split) == sum(COUNTS.values())  # test/ and val/ are read, not carved
    assert len(dataset.split("train")) == sum(COUNTS.values())
    batch = split.get_batch(np.arange(len(split)))
    assert batch["image"].shape == (24, 5, 5, 3) and batch["image"].dtype == np.float32
    np.testing.assert_array_equal(batch["label"], split.labels)
    np.testing.assert_array_equal(batch["index"], np.arange(24))
    for i, path in enumerate(split.paths):
        with Image.open(path) as image:
            reference = np.asarray(image.convert("RGB").resize((5, 5), Image.BILINEAR))
        np.testing.assert_allclose(batch["image"][i], reference / 255.0, atol=1e-7)
        if Path(path).stem == "img01":  # saved as greyscale: three equal channels
            assert np.array_equal(batch["image"][i, ..., 0], batch["image"][i, ..., 2])


def test_image_size_zero_takes_the_side_of_a_square_first_image(tmp_path):
    root = make_tree(tmp_path / "data", splits=("train", "val", "test"))
    before = sorted(p.name for p in root.rglob("*"))
    # The first training image, Moth/img00.png, is 9 × 7: no square side to take.
    first = root / "train" / "Moth" / "img00.png"
    with pytest.raises(DataError) as info:
        load_dataset(folder_config(root, image_size=0))
    assert str(info.value) == (
        f"data.image_size=0 takes the side of the first training image, but {first} is 7×9, "
        "not square; set a square side, e.g. --config.data.image_size=9."
    )
    assert sorted(p.name for p in root.rglob("*")) == before
    write_image(first, 0, size=(6, 6))
    dataset = load_dataset(folder_config(root, image_size=0))
    assert dataset.image_shape == (6, 6, 3)
    assert dataset.split("val").get_batch(np.arange(3))["image"].shape == (3, 6, 6, 3)


def test_modes_and_sizes_are_converted_and_resized_once_logged(tmp_path, caplog):
    root = tmp_path / "data"
    folder = root / "train" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (5, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(folder / "palette.png")
    Image.fromarray(rgba[:4, :3, 0], mode="L").save(folder / "grey.png")
    Image.fromarray(rgba[..., :3]).save(folder / "rgb.png")
    for split in ("val", "test"):
        (root / split / "a").mkdir(parents=True)
        Image.fromarray(rgba[..., :3]).resize((8, 3)).save(root / split / "a" / "wide.png")
    with caplog.at_level("INFO", logger="protojax"):
        dataset = load_dataset(folder_config(root, image_size=5))
    logged = [r.getMessage() for r in caplog.records if r.name == "protojax"]
    assert logged == [
        f"folder:{root}: of 6 images, 3 are converted to RGB (1 L, 1 P, 1 RGBA) and 3 "
        "resized to 5×5."
    ]
    batch = dataset.split("train").get_batch(np.arange(4))
    assert batch["image"].shape == (4, 5, 5, 3)
    names = [Path(p).name for p in dataset.split("train").paths]
    rgba_row = batch["image"][names.index("rgba.png")]
    np.testing.assert_array_equal(rgba_row, rgba[..., :3] / np.float32(255))  # alpha dropped
    grey_row = batch["image"][names.index("grey.png")]
    assert np.array_equal(grey_row[..., 0], grey_row[..., 2])


def test_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        load_dataset(folder_config(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}.*train/"):
        load_dataset(folder_config(empty))
    (empty / "train").mkdir()
    with pytest.raises(DataError, match=str(empty / "train")):
        load_dataset(folder_config(empty))
    (empty / "train" / "cat").mkdir()
    with pytest.raises(DataError, match=str(empty / "train" / "cat")):
        load_dataset(folder_config(empty))

    root = make_tree(tmp_path / "data", splits=("train", "test"))
    (root / "test" / "whale").mkdir()
    write_image(root / "test" / "whale" / "a.png", 0)
    with pytest.raises(DataError, match=str(root / "test" / "whale")):
        load_dataset(folder_config(root))


def test_unreadable_image_names_its_path_when_the_folder_loads(tmp_path):
    root = make_tree(tmp_path / "data", splits=("train", "val", "test"))
    broken = root / "test" / "ant" / "img00.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=f"^Cannot read image {broken} "):
        load_dataset(folder_config(root))


def break_png(path: Path):
    """Declares the PNG's first IDAT chunk empty: Pillow then reads compressed pixels as the
    next chunk's header and raises SyntaxError ("broken PNG file"), not an OSError."""
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat - 4 : idat] = (0).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def test_unreadable_image_stops_training_and_eval_passes_with_its_path(tmp_path):
    from protojax.data import pipeline

    root = make_tree(tmp_path / "data", splits=("train", "val", "test"))
    broken = root / "train" / "ant" / "img00.png"
    break_png(broken)
    split = load_dataset(folder_config(root)).split("train")
    with pytest.raises(DataError) as info:  # read in Grain's worker threads
        list(pipeline.train_batches(split, seed=0, batch_size=8, start_step=0, end_step=3))
    message = str(info.value)
    assert message.startswith(f"Cannot read image {broken} (broken PNG file")
    assert len(message.splitlines()) == 1 and isinstance(info.value.__cause__, SyntaxError)
    with pytest.raises(DataError, match=f"Cannot read image {broken} "):
        list(pipeline.ordered_batches(split, batch_size=8))


def test_every_class_keeps_training_images(tmp_path):
    root = make_tree(tmp_path / "data", counts={"a": 1, "b": 6})
    with pytest.raises(DataError, match=str(root / "train")):
        load_dataset(folder_config(root))
