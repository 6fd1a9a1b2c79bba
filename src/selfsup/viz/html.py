"""A self-contained HTML page: sections with headings, notes, tables, <pre> blocks and PNGs embedded as
base64 ``data:`` URIs (the file can be mailed or opened offline; the PNGs are also kept beside it)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
nav a { margin-right: 12px; font-size: 0.9em; }
img { max-width: 100%; display: block; margin: 8px 0; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.9em; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 0.85em; }
p.note { color: #8a5a00; background: #fff6e0; padding: 6px 10px; border-left: 4px solid #e0a000; }
p.caption { color: #555; font-size: 0.9em; margin-top: 0; }
"""


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def img_tag(png: str | Path, alt: str = "") -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    h = "".join(f"<th>{esc(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(md: str) -> str:
    """A Markdown pipe table (and the plain lines after it) as HTML; the compare table is written in Markdown."""
    lines = md.strip().splitlines()
    rows = [ln for ln in lines if ln.startswith("|")]
    rest = [ln.lstrip("- ").strip() for ln in lines if not ln.startswith("|") and ln.strip()]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows if not set(r) <= set("|-: ")]
    out = table(cells[0], cells[1:]) if cells else ""
    return out + "".join(f'<p class="caption">{esc(t)}</p>' for t in rest)


@dataclass
class Section:
    """One ``<section id=...>``: its parts are HTML snippets in order; ``notes`` say what could not be made."""

    id: str
    title: str
    parts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def image(self, png: str | Path, caption: str = "") -> None:
        self.parts.append(img_tag(png, caption or self.title))
        if caption:
            self.parts.append(f'<p class="caption">{esc(caption)}</p>')

    def text(self, t: str) -> None:
        self.parts.append(f"<p>{esc(t)}</p>")

    def pre(self, t: str) -> None:
        self.parts.append(f"<pre>{esc(t)}</pre>")

    def note(self, t: str) -> None:
        self.notes.append(t)

    def render(self) -> str:
        notes = "".join(f'<p class="note">{esc(n)}</p>' for n in self.notes)
        return f'<section id="{esc(self.id)}">\n<h2>{esc(self.title)}</h2>\n{notes}{"".join(self.parts)}\n</section>'


def render_page(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    sub = f"<p>{esc(subtitle)}</p>" if subtitle else ""
    body = "\n".join(s.render() for s in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{esc(title)}</h1>{sub}<nav>{nav}</nav>\n{body}\n"
            "</body></html>\n")
