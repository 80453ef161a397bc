"""`cli.replaced_folder`: a launch's outputs replace the previous launch's whole, so that what
is on disk is what the launch lists; a failed launch leaves the previous outputs as they were;
a folder of files no launcher wrote is never replaced."""

import json

import pytest

from experiments import cli
from protojax.errors import UsageError


def _launch(out, count, **options):
    """Stands in for a launcher that writes `count` figures and the JSON that lists them."""
    with cli.replaced_folder(out, **options) as staging:
        names = [f"image_{i:03d}.png" for i in range(count)]
        for name in names:
            (staging / name).write_bytes(b"png")
        (staging / "explanations.json").write_text(json.dumps({"images": names}))


def _listed_and_present(out):
    listed = set(json.loads((out / "explanations.json").read_text())["images"])
    present = {p.name for p in out.iterdir() if p.suffix == ".png"}
    return listed, present


def test_a_smaller_launch_leaves_no_stale_files(tmp_path):
    out = tmp_path / "run" / "explanations"
    _launch(out, 5)
    _launch(out, 2)
    listed, present = _listed_and_present(out)
    assert listed == present == {"image_000.png", "image_001.png"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["explanations"]  # no staging left


def test_a_failed_launch_keeps_the_previous_outputs(tmp_path):
    out = tmp_path / "explanations"
    _launch(out, 3)
    with pytest.raises(RuntimeError), cli.replaced_folder(out) as staging:
        (staging / "image_000.png").write_bytes(b"half")
        raise RuntimeError("the model failed")
    listed, present = _listed_and_present(out)
    assert listed == present and len(present) == 3
    assert (out / "image_000.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explanations"]


def test_folders_of_other_files_and_files_are_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    with pytest.raises(UsageError, match=f"Output folder {mine} holds files that no protojax"):
        _launch(mine, 1)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    # A launcher's own default folder (WORKDIR/explanations of an older launch) is replaced.
    _launch(mine, 1, owned=True)
    assert _listed_and_present(mine)[1] == {"image_000.png"}
    assert not (mine / "thesis.tex").exists()
    afile = tmp_path / "out.png"
    afile.write_bytes(b"x")
    with pytest.raises(UsageError, match=f"Output {afile} is a file; pass a folder."):
        _launch(afile, 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    _launch(empty, 1)  # an empty folder may be used
    assert _listed_and_present(empty)[1] == {"image_000.png"}
