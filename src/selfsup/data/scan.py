"""Listing an image folder: ``root/<class>/...`` (labelled) or ``root/<image>`` (unlabelled).

Symbolic links are followed, but every file is listed once: files are identified by their real path, and a file
reached both directly and through a link keeps the label of the direct path (the link's copy is a counted,
warned duplicate). A class folder that links to the data root, or to a folder above it, is skipped with a
warning (it would relabel every image), and a link back to a folder already being walked is not entered again,
so link loops end. Names starting with ``.`` (``.git``, ``.ipynb_checkpoints``, macOS ``._x.jpg``) are ignored.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .base import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def _entries(d: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(d) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list {d} ({type(e).__name__}: {e.strerror or e})") from None


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()  # follows links; a broken link is not a directory
    except OSError:
        return False


def _is_image(e: os.DirEntry) -> bool:
    try:
        return os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()
    except OSError:
        return False


@dataclass
class _Walk:
    """Image files found under one folder: ``(path, real path, reached through a link)``."""

    files: list[tuple[Path, str, bool]] = field(default_factory=list)
    loops: int = 0

    def add_tree(self, top: Path, recursive: bool, root_real: str | None = None) -> None:
        """Walk ``top``; never re-enter a folder of this walk, nor ``root_real`` or a folder above it."""
        stack = [(top, os.path.islink(top))]
        walking: set[str] = set()
        while stack:
            d, linked = stack.pop()
            real = os.path.realpath(d)
            if real in walking or (root_real and _links_above(real, root_real)):  # a link loop
                self.loops += 1
                continue
            walking.add(real)
            for e in _entries(d):
                via_link = linked or e.is_symlink()
                if _is_image(e):
                    self.files.append((Path(e.path), os.path.realpath(e.path), via_link))
                elif recursive and _is_dir(e):
                    stack.append((Path(e.path), via_link))
        self.files.sort(key=lambda f: f[0])


def _dedupe(per_class: list[_Walk]) -> tuple[list[list[Path]], int]:
    """Keep each real file once: the first direct (not linked) occurrence, else the first linked one."""
    owner: dict[str, tuple[int, bool]] = {}
    for c, w in enumerate(per_class):
        for _, real, linked in w.files:
            prev = owner.get(real)
            if prev is None or (prev[1] and not linked):
                owner[real] = (c, linked)
    kept: list[list[Path]] = [[] for _ in per_class]
    dup = 0
    for c, w in enumerate(per_class):
        for path, real, linked in w.files:
            if owner.get(real) == (c, linked):
                kept[c].append(path)
                owner.pop(real)  # a second identical occurrence in the same class is a duplicate too
            else:
                dup += 1
    return kept, dup


def _links_above(real: str, root_real: str) -> bool:
    return real == root_real or root_real.startswith(real.rstrip(os.sep) + os.sep)


def scan_folder(root: str | Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """List image files; class subfolders give labels, a flat folder gives ``labels=None``."""
    r = Path(root)
    if not r.exists():
        raise DataError(f"data path not found: {r}")
    if not r.is_dir():
        raise DataError(f"data path is neither a directory nor a .npz file: {r}")
    root_real = os.path.realpath(r)
    subdirs: list[Path] = []
    above: list[Path] = []
    for e in _entries(r):
        if _is_dir(e):
            (above if _links_above(os.path.realpath(e.path), root_real) else subdirs).append(Path(e.path))
    if above:
        warnings.warn(f"{r}: skipped {len(above)} class folder(s) linking to the data root or above it "
                      f"(first: {above[0].name})", stacklevel=2)
    walks = []
    for d in subdirs:
        walks.append(_Walk())
        walks[-1].add_tree(d, recursive=True, root_real=root_real)
    kept, dup = _dedupe(walks)
    paths, labels, classes = [], [], []
    for d, files in zip(subdirs, kept):
        if files:
            classes.append(d.name)
            paths += files
            labels += [len(classes) - 1] * len(files)
    loops = sum(w.loops for w in walks)
    if dup or loops:
        warnings.warn(f"{r}: skipped {dup} duplicate image(s) (the same file reached through a link) and "
                      f"{loops} link(s) back to a folder already listed", stacklevel=2)
    flat = _Walk()
    flat.add_tree(r, recursive=False)
    if paths:
        if flat.files:
            warnings.warn(f"{r}: {len(flat.files)} images beside class folders are ignored", stacklevel=2)
        return paths, labels, classes
    flat_paths, dup = _dedupe([flat])
    if dup:
        warnings.warn(f"{r}: skipped {dup} duplicate image(s) (the same file reached through a link)", stacklevel=2)
    if not flat_paths[0]:
        raise DataError(f"no images found in {r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return flat_paths[0], None, []


TRAIN_NAMES = ("train",)
TEST_NAMES = ("test", "val", "valid", "validation")  # preferred first


def split_folders(root: str | Path) -> tuple[Path, Path] | None:
    """``(train, test)`` when ``root``'s only subfolders are ``train/`` and one or more of ``test/``, ``val/``,
    ``valid/``, ``validation/`` (any case; ``test`` preferred, then ``val``): a folder of two splits, not of two
    classes. None for any other folder (then its subfolders are classes)."""
    r = Path(root)
    if not r.is_dir():
        return None
    dirs = {e.name.lower(): Path(e.path) for e in _entries(r) if _is_dir(e)}
    if not any(n in dirs for n in TRAIN_NAMES) or set(dirs) - set(TRAIN_NAMES) - set(TEST_NAMES):
        return None
    test = next((dirs[n] for n in TEST_NAMES if n in dirs), None)
    return (dirs["train"], test) if test is not None else None
