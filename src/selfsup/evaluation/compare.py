"""One table across runs: method, backbone, data, epochs, wall-clock (summed over resumes), images/s (from ``run.json``) and each
protocol's top-1 with its spread and random-init baseline (from ``eval.json``).

Tolerant by design: a run without ``eval.json`` (not evaluated yet), without ``run.json`` (interrupted), with
a protocol others lack, or with unreadable JSON still gets a row, with "-" where a value is missing and a note.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data import DataError


@dataclass
class RunRow:
    name: str
    info: dict[str, Any] = field(default_factory=dict)  # run.json
    evals: dict[str, Any] = field(default_factory=dict)  # eval.json
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(f"no {path.name}")
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        notes.append(f"unreadable {path.name} ({type(e).__name__})")
        return {}
    return data if isinstance(data, dict) else {}


RUN_MARKERS = ("config.yaml", "run.json", "eval.json", "metrics.jsonl", "checkpoints")


def load_runs(paths: Sequence[str | Path]) -> list[RunRow]:
    """A row per run directory; other paths (files, folders holding none of a run's files) are skipped with one
    counted warning; raises if no run remains."""
    rows = []
    skipped = [p for p in map(Path, paths) if not (p.is_dir() and any((p / m).exists() for m in RUN_MARKERS))]
    if skipped and len(skipped) < len(paths):
        warnings.warn(f"compare: skipped {len(skipped)} paths that are not run directories (first: {skipped[0]})",
                      stacklevel=2)
    for p in map(Path, paths):
        if p in skipped:
            continue
        row = RunRow(p.name)
        row.info = _read_json(p / "run.json", row.notes)
        row.evals = _read_json(p / "eval.json", row.notes)
        rows.append(row)
    if not rows:
        shown = ", ".join(map(str, paths[:3])) + (f" (and {len(paths) - 3} more)" if len(paths) > 3 else "")
        raise DataError(f"compare: no run directories among {shown or '(nothing)'} (a run holds "
                        f"{', '.join(RUN_MARKERS)})")
    return rows


def columns(rows: list[RunRow]) -> list[tuple[str, str]]:
    """(protocol, metric) pairs in order of first appearance: each protocol's ``summary`` metrics."""
    cols: list[tuple[str, str]] = []
    for r in rows:
        for proto, res in r.evals.items():
            if proto in ("protocol", "baseline") or not isinstance(res, dict) or "metrics" not in res:
                continue
            for m in res.get("summary") or ["top1"]:
                if (proto, m) not in cols and m in res["metrics"]:
                    cols.append((proto, m))
    return cols


def _label(proto: str, metric: str) -> str:
    return proto if metric == "top1" else f"{proto} {metric.replace('top1@', '').replace('top1_', '')}"


def _metric(evals: dict[str, Any], proto: str, metric: str, baseline: bool = False) -> dict[str, Any] | None:
    src = evals.get("baseline", {}) if baseline else evals
    res = src.get(proto) if isinstance(src, dict) else None
    if not isinstance(res, dict):
        return None
    return res.get("metrics", {}).get(metric)


BASE_FIELDS = ("run", "method", "backbone", "data", "epochs", "wall_min", "images_per_s")


def _base_values(r: RunRow) -> dict[str, Any]:
    i, proto = r.info, r.evals.get("protocol", {})
    backbone = i.get("backbone") or proto.get("backbone")
    width = i.get("width") or proto.get("width")
    if backbone and width not in (None, 1, 1.0):
        backbone = f"{backbone} w{width:g}"
    wall = i.get("wall_s_total")  # every launch of a resumed run (run.json before it: the last launch's)
    wall = wall if isinstance(wall, (int, float)) else i.get("wall_s")
    return {"run": r.name, "method": i.get("method") or proto.get("method"), "backbone": backbone,
            "data": data_name(i.get("data") or proto.get("pretrain_data")),
            "epochs": i.get("epochs"), "wall_min": round(wall / 60, 1) if isinstance(wall, (int, float)) else None,
            "images_per_s": i.get("images_per_s")}


def data_name(path: Any) -> str | None:
    """The pretraining data as a table shows it: a dataset name, or a file's or folder's name."""
    if not isinstance(path, str) or not path:
        return None
    return Path(path.rstrip("/\\")).name or path


def _cell(m: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if m is None:
        return "-"
    s = f"{100 * m['mean']:.1f}"
    if len(m.get("values", [])) > 1:
        s += f" ± {100 * m['std']:.1f}"
    if b is not None:
        s += f" ({100 * b['mean']:.1f})"
    return s


CAPTION = "Top-1 % on the test split: mean ± std over seeds (random-init baseline in parentheses)."


def table_cells(rows: list[RunRow]) -> tuple[list[str], list[list[str]], list[str]]:
    """The table as plain strings: header, one row per run, and the notes (a run's missing files); the HTML
    comparison page renders these, :func:`to_markdown` escapes them."""
    cols = columns(rows)
    head = ["run", "method", "backbone", "data", "epochs", "wall-clock (min)", "images/s"] + [_label(*c) for c in cols]
    body = []
    for r in rows:
        base = _base_values(r)
        vals = ["-" if base[k] is None else str(base[k]) for k in BASE_FIELDS]
        vals += [_cell(_metric(r.evals, p, m), _metric(r.evals, p, m, baseline=True)) for p, m in cols]
        body.append(vals)
    return head, body, [f"{r.name}: {', '.join(r.notes)}" for r in rows if r.notes]


_MD = str.maketrans({"\\": "\\\\", "|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]", "&": "&amp;", "<": "&lt;",
                     ">": "&gt;", "\n": " ", "\r": " "})


def md_escape(v: object) -> str:
    """A value as the text of one Markdown table cell: ``|`` (a column), a newline (a row), backticks (code),
    brackets (links) and HTML are escaped, so a run named ``a|b<script>`` stays one cell of text."""
    return str(v).translate(_MD)


def to_markdown(rows: list[RunRow]) -> str:
    head, body, notes = table_cells(rows)
    lines = ["| " + " | ".join(map(md_escape, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(md_escape, vals)) + " |" for vals in body]
    lines += ["", CAPTION]
    return "\n".join(lines + ([""] + [f"- {md_escape(n)}" for n in notes] if notes else [])) + "\n"


def to_csv(rows: list[RunRow]) -> str:
    cols = columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [_label(*c).replace(" ", "_") for c in cols]
    w.writerow(list(BASE_FIELDS) + [f"{n}_{s}" for n in names for s in ("top1", "std", "seeds", "baseline")]
               + ["notes"])
    for r in rows:
        base = _base_values(r)
        vals: list[Any] = [base[k] for k in BASE_FIELDS]
        for p, m in cols:
            t, b = _metric(r.evals, p, m), _metric(r.evals, p, m, baseline=True)
            vals += [t["mean"] if t else "", t["std"] if t else "", len(t.get("values", [])) if t else "",
                     b["mean"] if b else ""]
        w.writerow(["" if v is None else v for v in vals] + ["; ".join(r.notes)])
    return buf.getvalue()


def compare_runs(paths: list[str | Path], out: str | Path | None = "compare") -> tuple[str, str]:
    """Markdown and CSV text of the table; written to ``out``.md / ``out``.csv unless ``out`` is None."""
    rows = load_runs(paths)
    md, table = to_markdown(rows), to_csv(rows)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(md)
        out.with_suffix(".csv").write_text(table)
    return md, table
