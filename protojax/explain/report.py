"""A static HTML report of a run directory: `ROOT/report/index.html`.

The report takes a directory and plain dicts (the config, the summary): it shows the summary
and the config, then every figure found under the directory, in sections:
- **Training**: `figures/` (training curves first);
- **Prototypes**: figures whose path names a gallery or prototypes;
- **Comparison grids**: figures whose name starts with `grid`;
- **Explained images**: one page per image, gathering the figures of a folder `image_<n>/`
  (or named `image_<n>.*`); an `image.json` in that folder holds the facts shown on the page
  (prediction, label, scores);
- **Evaluation**: `evaluation/`;
- **Other figures**: everything else, so that every figure is reachable.

The figures are copied under `report/files/`, so that the `report/` folder alone can be handed
on. The page loads nothing from the network. An inline script marks each image once the page
has loaded: `data-loaded="yes"` (or `"no"`) on every `<img>`, and `data-images-total`,
`data-images-loaded` and `data-ready="yes"` on `<body>`, so that a headless browser's DOM dump
tells whether every image loaded.
"""

from __future__ import annotations

import html
import json
import pathlib
import re
import shutil
from collections.abc import Mapping
from typing import Any, NamedTuple

REPORT_DIR = "report"
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
IMAGE_FACTS = "image.json"
# Never searched for figures: the report itself and the checkpoints (large, no figures).
_SKIPPED = ("report", "checkpoints")
_IMAGE_PART = re.compile(r"^image_(\d+)$")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 78em; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; vertical-align: top; }
figure { display: inline-block; margin: .5em; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; max-height: 40em; border: 1px solid #eee; }
figcaption { font-size: .8em; color: #555; }
nav a { margin-right: 1em; }
.thumbs figure img { max-height: 9em; }
.path { font-family: monospace; font-size: .9em; }
"""

# Marks every image once the page has loaded (see the module docstring).
_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = 0;
  images.forEach(function (img) {
    var ok = img.complete && img.naturalWidth > 0;
    img.dataset.loaded = ok ? "yes" : "no";
    if (ok) { loaded += 1; }
  });
  document.body.dataset.imagesTotal = String(images.length);
  document.body.dataset.imagesLoaded = String(loaded);
  document.body.dataset.ready = "yes";
});
"""


class ImagePage(NamedTuple):
    """The figures of one explained image: `key` names its page file."""

    key: str
    title: str
    figures: list[str]
    facts: dict[str, Any]


class Sections(NamedTuple):
    """The run's figures (paths relative to the run directory), sorted into sections."""

    training: list[str]
    prototypes: list[str]
    grids: list[str]
    pages: list[ImagePage]
    evaluation: list[str]
    other: list[str]


def find_figures(root: str | pathlib.Path) -> list[str]:
    """Every figure under `root` (but not under `report/` or `checkpoints/`), as sorted POSIX
    paths relative to `root`."""
    root = pathlib.Path(root)
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if relative.parts[0] in _SKIPPED or path.suffix.lower() not in FIGURE_SUFFIXES:
            continue
        if path.is_file():
            found.append(relative.as_posix())
    return sorted(found, key=_natural_key)


def _natural_key(text: str) -> list[Any]:
    """Sorts image_2 before image_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _image_page_of(relative: str) -> tuple[str, int, str | None] | None:
    """(folder holding the image_<n> part, n, the image_<n> folder or None when the figure
    itself is named image_<n>) for a figure of an explained image, else None."""
    parts = relative.split("/")
    for depth, part in enumerate(parts):
        is_folder = depth < len(parts) - 1
        match = _IMAGE_PART.match(part if is_folder else pathlib.PurePosixPath(part).stem)
        if match:
            folder = "/".join(parts[:depth])
            return folder, int(match.group(1)), "/".join(parts[: depth + 1]) if is_folder else None
    return None


def sort_figures(root: str | pathlib.Path, figures: list[str]) -> Sections:
    """Sorts figure paths (relative to `root`) into the report's sections."""
    root = pathlib.Path(root)
    sections = Sections([], [], [], [], [], [])
    pages: dict[tuple[str, int], list[str]] = {}
    fact_files: dict[tuple[str, int], pathlib.Path] = {}
    for relative in figures:
        lowered = relative.lower()
        name = pathlib.PurePosixPath(lowered).name
        page = _image_page_of(relative)
        if page is not None:
            pages.setdefault(page[:2], []).append(relative)
            if page[2] is not None:
                fact_files.setdefault(page[:2], root / page[2] / IMAGE_FACTS)
        elif lowered.startswith("evaluation/"):
            sections.evaluation.append(relative)
        elif name.startswith("grid"):
            sections.grids.append(relative)
        elif "gallery" in lowered or "prototype" in lowered:
            sections.prototypes.append(relative)
        elif lowered.startswith("figures/"):
            sections.training.append(relative)
        else:
            sections.other.append(relative)
    # The training curves lead their section.
    sections.training.sort(key=lambda p: (not p.endswith("training_curves.png"), _natural_key(p)))
    for (folder, index), paths in sorted(pages.items(), key=lambda kv: _natural_key(str(kv[0]))):
        facts = _read_facts(fact_files[folder, index]) if (folder, index) in fact_files else {}
        where = folder.replace("/", " / ") if folder else "run"
        key = re.sub(r"[^A-Za-z0-9]+", "_", f"{folder}_image_{index}").strip("_")
        sections.pages.append(ImagePage(key, f"{where}: image {index}", paths, facts))
    return sections


def _read_facts(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        facts = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"note": f"{path.name} is not valid JSON"}
    return facts if isinstance(facts, dict) else {"facts": facts}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{cells}</table>"


def _caption(relative: str) -> str:
    return pathlib.PurePosixPath(relative).stem.replace("_", " ")


def _figure(relative: str, prefix: str) -> str:
    source = html.escape(f"{prefix}files/{relative}", quote=True)
    return (
        f'<figure><a href="{source}"><img src="{source}" alt="{html.escape(_caption(relative))}">'
        f'</a><figcaption>{html.escape(_caption(relative))} · <span class="path">'
        f"{html.escape(relative)}</span></figcaption></figure>"
    )


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def _section(title: str, anchor: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{content}\n</section>\n'


def _index(title: str, config, summary, sections: Sections) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    figure_sections = [
        ("Training", "training", sections.training),
        ("Prototypes", "prototypes", sections.prototypes),
        ("Comparison grids", "grids", sections.grids),
        ("Evaluation", "evaluation", sections.evaluation),
        ("Other figures", "other", sections.other),
    ]
    links = ['<a href="#summary">Summary</a>', '<a href="#config">Config</a>']
    for name, anchor, figures in figure_sections[:3]:
        if figures:
            links.append(f'<a href="#{anchor}">{name}</a>')
    if sections.pages:
        links.append('<a href="#images">Explained images</a>')
    for name, anchor, figures in figure_sections[3:]:
        if figures:
            links.append(f'<a href="#{anchor}">{name}</a>')
    parts.append(f"<nav>{''.join(links)}</nav>")
    summary_html = _table(_flatten(summary)) if summary else "<p>No summary yet.</p>"
    parts.append(_section("Summary", "summary", summary_html))
    config_html = (
        f"<details><summary>{len(_flatten(config))} keys</summary>"
        f"{_table(_flatten(config))}</details>"
    )
    parts.append(_section("Config", "config", config_html))
    for name, anchor, figures in figure_sections[:3]:
        if figures:
            parts.append(_section(name, anchor, "".join(_figure(f, "") for f in figures)))
    if sections.pages:
        rows = []
        for page in sections.pages:
            facts = ", ".join(f"{k} {_format(v)}" for k, v in page.facts.items())
            rows.append(
                f'<tr><td><a href="pages/{page.key}.html">{html.escape(page.title)}</a></td>'
                f"<td>{html.escape(facts)}</td><td>{len(page.figures)} figures</td></tr>"
            )
        parts.append(_section("Explained images", "images", f"<table>{''.join(rows)}</table>"))
    for name, anchor, figures in figure_sections[3:]:
        if figures:
            parts.append(_section(name, anchor, "".join(_figure(f, "") for f in figures)))
    return _document(title, "\n".join(parts))


def _page(title: str, pages: list[ImagePage], i: int) -> str:
    page = pages[i]
    nav = ['<a href="../index.html">report</a>']
    if i > 0:
        nav.append(f'<a href="{pages[i - 1].key}.html">previous image</a>')
    if i + 1 < len(pages):
        nav.append(f'<a href="{pages[i + 1].key}.html">next image</a>')
    facts = page.facts
    body = [
        f"<nav>{''.join(nav)}</nav>",
        f"<h1>{html.escape(page.title)}</h1>",
        f"<p>{html.escape(title)}</p>",
        _table(list(facts.items())) if facts else "",
        "".join(_figure(f, "../") for f in page.figures),
    ]
    return _document(f"{page.title} · {title}", "\n".join(body))


def write_report(
    root: str | pathlib.Path,
    *,
    title: str,
    config: Mapping[str, Any],
    summary: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Writes `root/report/` afresh (index.html, a page per explained image, the figures).

    Args:
      root: the run directory whose figures are reported.
      title: the report's title, for example the method and dataset.
      config: the run's config as a (nested) dict.
      summary: the run's final figures as a (nested) dict, or None.

    Returns:
      The path of `index.html`.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; pass a run directory.")
    figures = find_figures(root)
    sections = sort_figures(root, figures)
    staging = root / f".{REPORT_DIR}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "pages").mkdir(parents=True)
    for relative in figures:
        target = staging / "files" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, target)
    (staging / "index.html").write_text(_index(title, config, summary or {}, sections))
    for i, page in enumerate(sections.pages):
        (staging / "pages" / f"{page.key}.html").write_text(_page(title, sections.pages, i))
    final = root / REPORT_DIR
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final / "index.html"
