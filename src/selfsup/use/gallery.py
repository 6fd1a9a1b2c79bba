"""An HTML gallery of queries and their nearest neighbours, or of near-duplicate pairs: one self-contained file.

Each row is a query (or a pair) followed by its neighbours, each a 96 px thumbnail embedded as a base64 ``data:``
URI with its id, cosine and class. Thumbnails are read from where the embeddings came from (recorded in their
metadata): the image folder (only files inside it), or the ``.npz`` / built-in dataset; an image that cannot
be read shows as "no image". The page is the Jinja2 template ``templates/gallery.html.j2`` rendered with
autoescaping: ids, class names and paths are text, never markup; the page has no script.
"""
from __future__ import annotations

import base64
import io
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from ..data.folder import BadImage, decode_image
from ..errors import ConfigError
from .embed import Embeddings

THUMB = 96


@lru_cache(maxsize=1)
def _environment():
    try:
        import jinja2
    except ImportError:
        raise ConfigError("--html needs Jinja2, which is not installed: pip install 'selfsup[viz]' (or jinja2>=3)"
                          ) from None
    return jinja2.Environment(loader=jinja2.PackageLoader("selfsup.use", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined)


def _png_uri(chw: np.ndarray) -> str:
    from PIL import Image

    arr = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)
    im = Image.fromarray(np.ascontiguousarray(arr))
    if im.size[0] < THUMB:
        im = im.resize((THUMB, THUMB), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Thumbnails:
    """Thumbnails by id (or by image path, for image queries), from the data the embeddings were made from."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.root = Path(meta["root"]).resolve() if meta.get("root") else None
        self.data = meta.get("data")
        self._ds: Any = None

    def of_file(self, path: str | Path) -> str | None:
        try:
            return _png_uri(decode_image(Path(path), THUMB, 3))
        except (BadImage, OSError):
            return None

    def of_id(self, name: str) -> str | None:
        if self.root is not None:  # only files inside the folder (an id is a relative path without "..")
            rel = PurePosixPath(name)
            return None if rel.is_absolute() or ".." in rel.parts else self.of_file(self.root / rel)
        split, _, index = name.partition("/")
        try:
            if self._ds is None:
                from ..data import load_dataset

                self._ds = load_dataset(str(self.data))
            images = getattr(self._ds, split).images
            return _png_uri(images[int(index)].numpy())
        except Exception:  # the data moved, another split layout, an id of another file: no thumbnail
            return None


def _label(emb: Embeddings, row: int) -> str:
    if emb.labels is None:
        return ""
    y = int(emb.labels[row])
    return emb.classes[y] if 0 <= y < len(emb.classes) else str(y)


def neighbour_rows(emb: Embeddings, thumbs: Thumbnails, queries: Sequence[str], exclude: Sequence[int],
                   idx: np.ndarray, sims: np.ndarray) -> list[list[dict[str, Any]]]:
    """One row per query: the query, then its neighbours with their cosine."""
    rows = []
    for q, own, hits, scores in zip(queries, exclude, idx, sims):
        first = {"name": q, "score": "query", "label": _label(emb, own) if own >= 0 else "",
                 "src": thumbs.of_id(q) if own >= 0 else thumbs.of_file(q)}
        rows.append([first] + [{"name": emb.ids[j], "score": f"{s:.3f}", "label": _label(emb, j),
                                "src": thumbs.of_id(emb.ids[j])} for j, s in zip(hits.tolist(), scores.tolist())])
    return rows


def pair_rows(emb: Embeddings, thumbs: Thumbnails, pairs: Sequence[tuple[int, int, float]]
              ) -> list[list[dict[str, Any]]]:
    """One row per near-duplicate pair."""
    return [[{"name": emb.ids[i], "score": "", "label": _label(emb, i), "src": thumbs.of_id(emb.ids[i])},
             {"name": emb.ids[j], "score": f"{s:.3f}", "label": _label(emb, j), "src": thumbs.of_id(emb.ids[j])}]
            for i, j, s in pairs]


def write_gallery(out: str | Path, title: str, subtitle: Sequence[str], rows: list[list[dict[str, Any]]]) -> Path:
    """Render the rows to ``out`` (a self-contained HTML file)."""
    out = Path(out)
    html = _environment().get_template("gallery.html.j2").render(title=str(title),
                                                                 subtitle=[str(s) for s in subtitle], rows=rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
