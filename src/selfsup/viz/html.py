"""A self-contained HTML page: sections with headings, notes, tables, <pre> blocks and PNGs embedded as
base64 ``data:`` URIs (the file can be mailed or opened offline; the PNGs are also kept beside it).

A :class:`Section` holds data, never HTML: its parts are plain values (text, table cells, PNG bytes) that the
Jinja2 template ``templates/page.html.j2`` renders with autoescaping on. Every value that reaches the page is
escaped by default, so a run name, data path or ``eval.json`` field holding markup shows as text; nothing a user
controls is marked safe. The page has no script of its own.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence


@lru_cache(maxsize=1)
def _environment():
    try:
        import jinja2
    except ImportError as e:  # the viz extra brings it
        raise ImportError("selfsup report needs Jinja2: pip install 'selfsup[viz]' (or jinja2>=3)") from e
    return jinja2.Environment(loader=jinja2.PackageLoader("selfsup.viz", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def data_uri(png: str | Path) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI (base64 has no character HTML would need escaped)."""
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def _text(v: Any) -> str:
    return "" if v is None else str(v)


@dataclass
class Section:
    """One ``<section id=...>``: its parts in order (images, captions, tables, text, pre blocks) and ``notes``
    that say what could not be made."""

    id: str
    title: str
    parts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def image(self, png: str | Path, caption: str = "") -> None:
        self.parts.append({"kind": "image", "src": data_uri(png), "alt": _text(caption or self.title)})
        if caption:
            self.caption(caption)

    def caption(self, t: str) -> None:
        self.parts.append({"kind": "caption", "text": _text(t)})

    def text(self, t: str) -> None:
        self.parts.append({"kind": "text", "text": _text(t)})

    def pre(self, t: str) -> None:
        self.parts.append({"kind": "pre", "text": _text(t)})

    def table(self, head: Sequence[Any], rows: Sequence[Sequence[Any]]) -> None:
        self.parts.append({"kind": "table", "head": [_text(c) for c in head],
                           "rows": [[_text(c) for c in r] for r in rows]})

    def note(self, t: str) -> None:
        self.notes.append(_text(t))


def render_page(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The whole page as HTML text."""
    return _environment().get_template("page.html.j2").render(title=_text(title), subtitle=_text(subtitle),
                                                              sections=list(sections))
