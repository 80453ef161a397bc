"""The comparison figures and the HTML report, rendered in headless Chromium.

Chromium loads each page from disk (`--dump-dom`); the report's inline script marks every
`<img>` with `data-loaded` once the page has loaded. Without Chromium the browser tests skip,
saying why, except under CI=true, where they fail (`.ci/run` installs it).
"""

from __future__ import annotations

import html.parser
import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from protojax.explain import grid, report
from protojax.imaging import save_png

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = "Chromium is not installed (apt-get install -y chromium); the report is not rendered"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}.")
    pytest.skip(reason)


class _Dom(html.parser.HTMLParser):
    """The attributes of <body>, of every <img> and every href of a DOM dump."""

    def __init__(self, text: str):
        super().__init__()
        self.body, self.images, self.links = {}, [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])


def render(browser: str, page: pathlib.Path) -> _Dom:
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
        + ["--dump-dom", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return _Dom(result.stdout)


def _fake_run(root: pathlib.Path) -> list[str]:
    """A run directory with figures (small random PNGs) where the explain and train launchers
    put them, and facts for two explained images; returns the figure paths relative to root."""
    rng = np.random.default_rng(0)
    figures = [
        "figures/training_curves.png",
        "figures/latent_pca.png",
        "figures/prototypes.png",
        "explanations/test/grid.png",
        "explanations/gallery/class_000.png",
        "evaluation/deletion.png",
        "notes/extra.png",
    ]
    for n in range(2):
        figures += [f"explanations/test/image_{n:03d}/{name}.png" for name in ("saliency", "rise")]
        facts = {"prediction": str(n + 1), "label": str(2 * n + 1)}
        (root / f"explanations/test/image_{n:03d}").mkdir(parents=True, exist_ok=True)
        (root / f"explanations/test/image_{n:03d}/image.json").write_text(json.dumps(facts))
    for relative in figures:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        save_png(root / relative, rng.uniform(size=(12, 16, 3)))
    (root / "checkpoints/1").mkdir(parents=True)
    save_png(root / "checkpoints/1/ignored.png", np.zeros((2, 2, 3)))
    return sorted(figures)


def test_figures_are_sorted_into_sections_and_image_pages(tmp_path):
    figures = _fake_run(tmp_path)
    assert report.find_figures(tmp_path) == sorted(figures, key=report._natural_key)
    sections = report.sort_figures(tmp_path, report.find_figures(tmp_path))
    assert sections.training == ["figures/training_curves.png", "figures/latent_pca.png"]
    assert sections.prototypes == ["explanations/gallery/class_000.png", "figures/prototypes.png"]
    assert sections.grids == ["explanations/test/grid.png"]
    assert sections.evaluation == ["evaluation/deletion.png"]
    assert sections.other == ["notes/extra.png"]
    assert [(p.title, p.facts) for p in sections.pages] == [
        ("explanations / test: image 0", {"prediction": "1", "label": "1"}),
        ("explanations / test: image 1", {"prediction": "2", "label": "3"}),
    ]
    assert sections.pages[1].figures == [
        "explanations/test/image_001/rise.png",
        "explanations/test/image_001/saliency.png",
    ]
    # A figure named image_<n> joins the page of image n in its folder.
    paths = ["explanations/test/image_002.png", "explanations/test/image_002/rise.png"]
    (page,) = report.sort_figures(tmp_path, paths).pages
    assert page.figures == paths and page.facts == {}


def test_report_every_figure_loads_in_chromium(tmp_path):
    browser = chromium()
    figures = _fake_run(tmp_path)
    index = report.write_report(
        tmp_path,
        title="fake run",
        config={"method": "blackbox", "data": {"name": "digits", "image_size": 8}},
        summary={"test_accuracy": 0.875},
    )
    assert index == tmp_path / "report" / "index.html"
    texts = [p.read_text() for p in (tmp_path / "report").rglob("*.html")]
    assert not any("http://" in t or "https://" in t for t in texts)  # no network resources
    assert "data.image_size" in texts[0] or any("data.image_size" in t for t in texts)

    reached, pages = set(), [index]
    for page in pages:
        dom = render(browser, page)
        assert dom.body.get("data-ready") == "yes", page
        assert dom.images, page
        assert [img.get("data-loaded") for img in dom.images] == ["yes"] * len(dom.images), page
        assert dom.body["data-images-loaded"] == dom.body["data-images-total"]
        assert int(dom.body["data-images-total"]) == len(dom.images)
        for img in dom.images:
            reached.add((page.parent / img["src"]).resolve())
        for link in dom.links:
            target = (page.parent / link.split("#")[0]).resolve()
            if target.suffix == ".html" and target not in pages:
                pages.append(target)
    assert len(pages) == 3  # the index and a page per explained image
    copies = {(tmp_path / "report/files" / f).resolve() for f in figures}
    assert reached == copies
    for relative in figures:  # copied byte for byte
        copy = (tmp_path / "report/files" / relative).read_bytes()
        assert copy == (tmp_path / relative).read_bytes()

    # The check catches a broken image: a copied figure removed fails to load.
    (tmp_path / "report/files/explanations/test/grid.png").unlink()
    dom = render(browser, index)
    failed = [img["src"] for img in dom.images if img.get("data-loaded") != "yes"]
    assert failed == ["files/explanations/test/grid.png"]
    assert int(dom.body["data-images-loaded"]) == len(dom.images) - 1

    # Rewriting drops the stale report (a figure removed from the run leaves it).
    (tmp_path / "notes/extra.png").unlink()
    report.write_report(tmp_path, title="fake run", config={})
    assert not (tmp_path / "report/files/notes").exists()
    assert (tmp_path / "report/files/explanations/test/grid.png").is_file()


def test_comparison_grid_draws_each_map_divided_by_its_max_abs():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(3, 6, 5, 3)).astype(np.float32)
    maps = {"a": rng.normal(size=(3, 6, 5)), "b": np.abs(rng.normal(size=(3, 6, 5)))}
    maps["b"][2, 0, 0] = np.nan
    fig = grid.comparison_grid(
        images, maps, predictions=["x", "y", "z"], labels=["x", "q", "z"], notes=["", "p", ""]
    )
    axes = np.asarray(fig.axes[:-1]).reshape(3, 3)  # the last axes is the colour bar
    assert fig.axes[-1].get_ylabel() == "relevance / max |relevance| of its map"
    for r in range(3):
        assert axes[r, 0].get_ylabel().startswith(f"pred {'xyz'[r]}")
        for c, name in enumerate(maps, start=1):
            drawn = axes[r, c].images
            if name == "b" and r == 2:  # the NaN map is not drawn, its panel says so
                assert len(drawn) == 1 and "1 non-finite" in axes[r, c].texts[0].get_text()
                continue
            values = maps[name][r]
            np.testing.assert_allclose(
                drawn[-1].get_array(), values / np.abs(values).max(), rtol=1e-6
            )
            assert drawn[-1].get_clim() == (-1.0, 1.0)
    assert axes[1, 0].yaxis.label.get_color() == "crimson"  # predicted y, label q
    assert axes[0, 0].yaxis.label.get_color() == "black"
    with pytest.raises(ValueError, match=r"maps\['a'\] has shape"):
        grid.comparison_grid(images, {"a": maps["a"][:, :3]}, predictions="xyz", labels="xyz")
    with pytest.raises(ValueError, match="one prediction and one label per image"):
        grid.comparison_grid(images, maps, predictions="xy", labels="xy")


def test_explanation_figure_has_a_colour_bar_per_map_in_its_own_units():
    rng = np.random.default_rng(2)
    image = rng.uniform(size=(7, 7, 1)).astype(np.float32)
    maps = {"relax": rng.normal(size=(7, 7)), "uncertainty": 3 * rng.uniform(size=(7, 7))}
    fig = grid.explanation_figure(image, maps, title="t")
    image_axes = [ax for ax in fig.axes if ax.get_title() in maps]
    assert len(fig.axes) == 5  # the image, two maps, two colour bars
    signed, positive = maps.values()
    for ax, values in zip(image_axes, maps.values(), strict=True):
        np.testing.assert_allclose(ax.images[-1].get_array(), values, rtol=1e-6)
    # A signed map symmetric about zero; a map without negative values on its own range.
    limit = np.abs(signed).max()
    np.testing.assert_allclose(image_axes[0].images[-1].get_clim(), (-limit, limit), rtol=1e-6)
    expected = (positive.min(), positive.max())
    np.testing.assert_allclose(image_axes[1].images[-1].get_clim(), expected, rtol=1e-6)
