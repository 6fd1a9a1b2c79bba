"""Sharded image datasets: WebDataset-style tar shards that ``selfsup shard`` writes (data/shard_write.py).

Format (version 1). A shard folder holds ``shard-000000.tar``, ``shard-000001.tar``, ... and ``index.json``. Each
shard is a plain (ustar) tar whose samples are consecutive members sharing a key: ``<key>.<ext>``, the image's
original bytes (``jpg``, ``png``, ...; ``jpg`` when it was re-encoded to fit the size cap), ``<key>.cls``, its
class index as text (labelled folders only), and ``<key>.id``, its id: the path relative to the folder it came
from (data/ids.py). Keys are the sample's number, zero-padded (``000000042``), so the tars also read as WebDataset
shards elsewhere. ``index.json`` records the format and version, the classes, the channel count, and per shard its
file name, byte size, sample count, ids, labels, and each image member's name, data offset and size.

Reading. :class:`ShardSplit` reads an image member where the index says it is (one seek and one read: the
member's 512-byte tar header and its bytes; the header must name that member and its size, so an index that does
not match the shard is caught) and decodes it with data/folder.py ``decode_bytes`` in DataLoader workers: a
shard member decodes to the same array as the file it came from.

Order. A shuffled epoch's order is a function of the generator alone, not of the number of workers: the shards
in a random order, cut into windows of ``window`` shards (default 8), each window's images in a random order, the
windows one after another. Reads stay within a few shards at a time while images of different shards still mix;
a dataset of at most ``window`` shards gets one global permutation. ``shuffle=False`` is index order. The order is
cut into batches before anything is read and the DataLoader's sampler hands each batch to one worker, so no image
is read twice in an epoch, and ``start_batch`` skips the first batches of that same order (a resumed epoch
continues exactly). Under ``torchrun`` every rank draws the same order and reads only its slice of each global
batch (engine/distributed.py ``rank_batches``), as streaming image folders do.

Bad input: a corrupt image member is a counted skip (one warning per pass). A shard that is missing, whose size
differs from the index's, or whose members are not where the index says is a one-line :class:`DataError` naming
it: at load time (missing, size, a malformed entry) or when it is read. A reader process that dies is a one-line
error naming the shards it was reading.
"""
from __future__ import annotations

import functools
import hashlib
import json
import tarfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from .base import DataError, ImageDataset
from .folder import BadImage, _note_conversion, _reason, decode_bytes
from .scan import IMAGE_EXTENSIONS, split_folders

FORMAT = "selfsup-shards"
VERSION = 1
INDEX = "index.json"
SHARD_NAME = "shard-{:06d}.tar"
BLOCK = tarfile.BLOCKSIZE  # 512: a member's bytes follow its ustar header
IMAGE_EXTS = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)
MAX_TEXT = 1 << 16  # a .cls or .id member longer than this is not one
MAX_OPEN = 16  # shard files one reader keeps open at once


# ----------------------------------------------------------------------------------------------- the index
def _split_name(name: str) -> tuple[str, str]:
    """A member name's ``(key, extension)``: WebDataset's split at the first dot of the last path part."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def scan_shard(path: Path) -> dict[str, Any]:
    """The ``index.json`` entry of one tar shard, read from its members (the writer indexes what it wrote).

    Members are grouped into samples by key; a sample is kept when it has an image member (the first one, by
    extension); ``.cls`` gives its label, ``.id`` its id (default: the key).
    """
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                key, ext = _split_name(m.name)
                if not m.isfile() or not ext:
                    continue
                s = samples.setdefault(key, {})
                if ext in IMAGE_EXTS and "image" not in s:
                    s["image"] = [m.name, m.offset_data, m.size]
                elif ext in ("cls", "id") and m.size <= MAX_TEXT:
                    f = tar.extractfile(m)
                    s[ext] = f.read().decode("utf-8", "surrogateescape") if f is not None else ""
        nbytes = path.stat().st_size
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: not a readable tar shard ({_reason(e)})") from None
    rows = [(k, s) for k, s in samples.items() if "image" in s]
    if not rows:
        raise DataError(f"{path}: no image members (expected <key>.jpg, <key>.png, ... members)")
    entry: dict[str, Any] = {"name": path.name, "bytes": nbytes, "count": len(rows),
                             "ids": [s.get("id", k) for k, s in rows], "members": [s["image"] for _, s in rows]}
    labelled = sum("cls" in s for _, s in rows)
    if labelled and labelled < len(rows):
        raise DataError(f"{path}: {len(rows) - labelled} of {len(rows)} samples have no .cls label (all or none must)")
    if labelled:
        try:
            entry["labels"] = [int(s["cls"].strip()) for _, s in rows]
        except ValueError:
            raise DataError(f"{path}: a .cls member is not a class index (a whole number as text)") from None
    return entry


def read_index(root: Path) -> dict[str, Any]:
    """``root/index.json``, checked to be a shard index of a version this code reads."""
    p = root / INDEX
    if not p.is_file():
        raise DataError(f"{root}: no {INDEX} (not a shard folder written by `selfsup shard`, or its writing was "
                        "interrupted: write it again)")
    try:
        index = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: not a readable shard index ({_reason(e)})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{p}: not a selfsup shard index (no \"format\": \"{FORMAT}\")")
    version = index.get("version")
    if type(version) is not int or not 1 <= version <= VERSION:
        raise DataError(f"{p}: shard format version {version!r}; this selfsup reads version {VERSION} (write the "
                        "shards again, or update selfsup)")
    return index


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _entry_ok(entry: dict[str, Any], nbytes: int, num_classes: int) -> bool:
    """Whether a shard's entry is self-consistent and every member it lists lies inside the shard's bytes."""
    try:
        n, ids, members, labels = entry["count"], entry["ids"], entry["members"], entry.get("labels")
        return (_is_count(n) and n >= 1 and isinstance(ids, list) and isinstance(members, list)
                and len(ids) == n == len(members) and all(isinstance(i, str) for i in ids)
                and all(len(m) == 3 and isinstance(m[0], str) and _is_count(m[1]) and _is_count(m[2])
                        and m[1] >= BLOCK and m[1] + m[2] <= nbytes for m in members)
                and (labels is None or (isinstance(labels, list) and len(labels) == n
                                        and all(_is_count(c) and c < num_classes for c in labels))))
    except (KeyError, TypeError, AttributeError):
        return False


def _check_shard(root: Path, entry: Any, num_classes: int) -> Path:
    """The path of one listed shard, once it is there, has the recorded size and a consistent entry."""
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name.endswith(".tar") or Path(name).name != name or name.startswith("."):
        raise DataError(f"{root / INDEX}: a shard entry without a shard file name ({str(entry)[:60]})")
    path = root / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: missing (listed in {INDEX}); copy the whole shard folder, or write it "
                        "again") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({_reason(e)})") from None
    if size != entry.get("bytes"):
        raise DataError(f"{path}: {size} bytes but {INDEX} records {entry.get('bytes')} (truncated or changed since "
                        "it was written; copy it again, or write the shards again)")
    if not _entry_ok(entry, size, num_classes):
        raise DataError(f"{path}: its entry in {INDEX} does not describe it (counts, ids, labels or member offsets "
                        "disagree; write the shards again)")
    return path


def open_split(root: str | Path, size: int, *, channels: int | None = None, workers: int = 0
               ) -> tuple["ShardSplit", dict[str, Any]]:
    """The shard folder ``root`` as a :class:`ShardSplit` decoding to ``size`` px (with ``channels``: default the
    index's), and its index. Every listed shard is checked (there, its recorded size) before any is read."""
    root = Path(root)
    index = read_index(root)
    classes, shards, native = index.get("classes"), index.get("shards"), index.get("channels")
    if (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or native not in (1, 3)
            or not isinstance(shards, list) or not shards):
        raise DataError(f"{root / INDEX}: malformed (it needs classes, channels 1 or 3, and a list of shards)")
    paths = [_check_shard(root, e, len(classes)) for e in shards]
    if len(set(paths)) != len(paths):
        raise DataError(f"{root / INDEX}: lists a shard more than once")
    labelled = {e.get("labels") is not None for e in shards}
    if len(labelled) > 1:
        raise DataError(f"{root / INDEX}: some shards have labels and others have none")
    counts = [e["count"] for e in shards]
    if index.get("num_images", sum(counts)) != sum(counts):
        raise DataError(f"{root / INDEX}: num_images is {index.get('num_images')!r} but its shards hold {sum(counts)}")
    members = [m for e in shards for m in e["members"]]
    labels = torch.tensor([c for e in shards for c in e["labels"]], dtype=torch.int64) if True in labelled else None
    split = ShardSplit(root=root, shards=paths,
                       shard_of=torch.repeat_interleave(torch.arange(len(paths)), torch.tensor(counts)),
                       offsets=torch.tensor([m[1] for m in members], dtype=torch.int64),
                       sizes=torch.tensor([m[2] for m in members], dtype=torch.int64),
                       members=[m[0] for m in members], ids=[i for e in shards for i in e["ids"]], labels=labels,
                       size=size, channels=channels or native, workers=workers)
    return split, index


# ----------------------------------------------------------------------------------------------- reading
class _ShardFault(Exception):
    """A shard that cannot be read as its index says (missing, truncated, not matching): fatal, names it."""


class _ShardItems(torch.utils.data.Dataset):
    """Image ``i`` of a split, read at its offset and decoded. Never raises for bad data (a worker's exception
    reaches the main process as a traceback): returns ``(image or None, i, why it is missing, fatal)``."""

    def __init__(self, split: "ShardSplit") -> None:
        self.shards, self.shard_of, self.offsets, self.sizes = split.shards, split.shard_of, split.offsets, split.sizes
        self.members, self.ids, self.size, self.channels = split.members, split.ids, split.size, split.channels
        self.raw = split.decode_device is not None  # data.decode=device: the bytes, decoded by the main process
        self._files: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int):
        try:
            data = self._read(i)
        except _ShardFault as e:
            return None, i, str(e), True
        if self.raw:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), i, None, False
        try:
            return torch.from_numpy(decode_bytes(data, self.size, self.channels)), i, None, False
        except BadImage as e:
            return None, i, f"{self.ids[i]}: {e}", False

    def _read(self, i: int) -> bytes:
        """Member ``i``'s bytes, after checking the tar header before them names it and its size."""
        s, offset, n, member = int(self.shard_of[i]), int(self.offsets[i]), int(self.sizes[i]), self.members[i]
        path = self.shards[s]
        try:
            f = self._files.get(s)
            if f is None:
                if len(self._files) >= MAX_OPEN:
                    self.close()
                f = self._files[s] = open(path, "rb")
            f.seek(offset - BLOCK)
            buf = f.read(BLOCK + n)
        except OSError as e:
            raise _ShardFault(f"{path}: cannot read it ({_reason(e)})") from None
        if len(buf) < BLOCK + n:
            raise _ShardFault(f"{path}: truncated: {member} should end at byte {offset + n} but the file ends at "
                              f"{offset - BLOCK + len(buf)} (copy it again, or write the shards again)")
        try:
            head: tarfile.TarInfo | None = tarfile.TarInfo.frombuf(buf[:BLOCK], "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            head = None
        if head is None or head.size != n or not head.name or not member.startswith(head.name):
            raise _ShardFault(f"{path}: does not match {INDEX}: no member {member} of {n} bytes at byte "
                              f"{offset - BLOCK} (write the shards again)")
        return buf[BLOCK:]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker opens its own files
        return {**self.__dict__, "_files": {}}


def _collate(items, stack: bool = True):
    fatal = next((why for _, _, why, is_fatal in items if is_fatal), None)
    good = [(x, i) for x, i, _, _ in items if x is not None]
    why = [w for x, _, w, is_fatal in items if x is None and not is_fatal]
    if not good:
        return None, None, why, fatal
    xs = [x for x, _ in good]
    return (torch.stack(xs) if stack else xs), torch.tensor([i for _, i in good], dtype=torch.int64), why, fatal


def _collate_raw(items):
    return _collate(items, stack=False)


@dataclass
class ShardSplit:
    """A shard folder's images, decoded to ``size`` px by DataLoader workers (see the module docstring)."""

    root: Path
    shards: list[Path]
    shard_of: torch.Tensor  # (N,) int64: each image's shard (an index into ``shards``)
    offsets: torch.Tensor  # (N,) int64: where its image member's bytes start in that shard
    sizes: torch.Tensor  # (N,) int64: how many bytes they are
    members: list[str]  # its member name, checked against the tar header read before its bytes
    ids: list[str]
    labels: torch.Tensor | None
    size: int
    channels: int
    workers: int = 2
    window: int = 8  # shards whose images are shuffled together
    decode_device: torch.device | None = None  # data.decode=device: decode there, not in the workers

    @property
    def num_images(self) -> int:
        return len(self.members)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.size, self.size)

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        n = self.num_images
        return n // batch_size if drop_last else -(-n // batch_size)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of the shards' names and their members in order: what a resumed run's position (an epoch's
        order and how far into it) refers to; checkpoints record it and ``--resume`` compares it. One pass over
        the index, computed once per split."""
        h = hashlib.sha256()
        names = [p.name for p in self.shards]
        for s, m in zip(self.shard_of.tolist(), self.members):
            h.update(f"{names[s]}\0{m}\0".encode())
        return h.hexdigest()[:16]

    def epoch_order(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A shuffled epoch: every image index once, windows of shards in a random order, each window's images in
        a random order (a function of ``generator`` alone)."""
        _, counts = torch.unique_consecutive(self.shard_of, return_counts=True)  # one run per shard
        starts = (torch.cumsum(counts, 0) - counts).tolist()
        counts_l = counts.tolist()
        runs = torch.randperm(len(counts_l), generator=generator).tolist()
        w = max(1, self.window)
        parts = []
        for k in range(0, len(runs), w):
            idx = torch.cat([torch.arange(starts[r], starts[r] + counts_l[r]) for r in runs[k : k + w]])
            parts.append(idx[torch.randperm(len(idx), generator=generator)])
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    def batches(self, batch_size, *, shuffle, generator=None, drop_last=False, start_batch=0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        order = self.epoch_order(generator) if shuffle else torch.arange(self.num_images)
        order = order[start_batch * batch_size : self.num_batches(batch_size, drop_last) * batch_size]
        bad, first = 0, ""
        for x, idx, why in self.read_batches(order, batch_size):
            if why:
                bad, first = bad + len(why), first or why[0]
            if x is not None and idx is not None:
                yield x, idx, (self.labels[idx] if self.labels is not None else None)
        if bad:
            warnings.warn(f"{self.root}: skipped {bad} unreadable images while reading its shards (first: {first})",
                          stacklevel=2)

    def read_batches(self, order: torch.Tensor, batch_size: int
                     ) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None, list[str]]]:
        """The images at ``order``, ``batch_size`` at a time, decoded by ``workers`` DataLoader workers:
        ``(images or None, their indices or None, why each unreadable one was left out)``."""
        items = _ShardItems(self)
        loader = torch.utils.data.DataLoader(
            items, batch_size=batch_size, sampler=order.tolist(), num_workers=self.workers,
            collate_fn=_collate_raw if items.raw else _collate, persistent_workers=False,
            pin_memory=torch.cuda.is_available() and not items.raw)
        done = 0
        try:
            for x, idx, why, fatal in loader:
                if fatal is not None:
                    raise DataError(fatal)
                done += 1
                if items.raw and x is not None and idx is not None:
                    x, idx, why = self._decode_on_device(x, idx, why)
                yield x, idx, why
        except RuntimeError as e:  # the DataLoader's "worker (pid N) exited unexpectedly": never a hang
            if "DataLoader worker" not in str(e):
                raise
            where = self._in_flight(order, done, batch_size)
            raise DataError(f"{self.root}: a reader process died while reading {where} "
                            f"({str(e).splitlines()[0]})") from None
        finally:
            items.close()

    def _decode_on_device(self, encoded: list[torch.Tensor], idx: torch.Tensor, why: list[str]
                          ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
        """A batch of member bytes decoded on ``decode_device`` (data/device_decode.py); undecodable ones left out."""
        from .device_decode import decode_batch

        assert self.decode_device is not None
        x, bad = decode_batch(encoded, self.size, self.channels, self.decode_device)
        if not bad:
            return x, idx, why
        why = [*why, *(f"{self.ids[int(idx[i])]}: not decodable on {self.decode_device}" for i in bad)]
        keep = torch.tensor([i for i in range(len(encoded)) if i not in set(bad)], dtype=torch.int64)
        return x, (idx[keep] if len(keep) else None), why

    def _in_flight(self, order: torch.Tensor, done: int, batch_size: int) -> str:
        """The shards of the batches being read after ``done`` delivered ones (a DataLoader prefetches 2 a worker)."""
        ahead = order[done * batch_size : (done + 2 * max(1, self.workers)) * batch_size]
        s = sorted(set(self.shard_of[ahead].tolist()))
        more = f" and {len(s) - 3} more" if len(s) > 3 else ""
        return ", ".join(self.shards[i].name for i in s[:3]) + more

    def subset(self, idx: torch.Tensor) -> "ShardSplit":
        """The images at ``idx``, in that order, still read from the shards."""
        rows = idx.tolist()
        return replace(self, shard_of=self.shard_of[idx], offsets=self.offsets[idx], sizes=self.sizes[idx],
                       members=[self.members[i] for i in rows], ids=[self.ids[i] for i in rows],
                       labels=self.labels[idx] if self.labels is not None else None)


# ----------------------------------------------------------------------------------------------- datasets
def shard_layout(path: Path) -> tuple[Path, Path | None] | None:
    """``(train, test or None)`` when ``path`` is a shard folder (it holds index.json) or holds only ``train/``
    and ``val/`` (or ``test/``...) shard folders, as ``selfsup shard`` writes them for such a folder; else None."""
    if not path.is_dir():
        return None
    if (path / INDEX).is_file():
        return path, None
    splits = split_folders(path)
    if splits is not None and all((d / INDEX).is_file() for d in splits):
        return splits
    if next(path.glob("shard-*.tar"), None) is not None:
        read_index(path)  # shards without their index: the one-line "no index.json" error
    return None


def _note_channels(where: Path, channels: int, index: dict[str, Any]) -> None:
    gray, colour = index.get("grayscale_images", 0), index.get("colour_images", 0)
    if _is_count(gray) and _is_count(colour):
        _note_conversion(where, channels, gray, colour, index.get("num_images", gray + colour))


def load_shards(root: str | Path, image_size: int | None, *, test_root: str | Path | None = None,
                workers: int = 0) -> ImageDataset:
    """A shard folder as an :class:`ImageDataset` decoded at ``image_size`` px (default 64, as for folders; a shard
    folder always streams). ``test_root``, another shard folder, is the test split, in the train split's channels."""
    root = Path(root)
    size = image_size or 64
    train, index = open_split(root, size, workers=max(workers, 1))
    _note_channels(root, train.channels, index)
    test = None
    if test_root is not None:
        test, tindex = open_split(test_root, size, channels=train.channels, workers=max(workers, 1))
        if tindex["classes"] and index["classes"] and tindex["classes"] != index["classes"]:
            raise DataError(f"{test_root}: classes {tindex['classes'][:5]} differ from {root}'s {index['classes'][:5]}")
        _note_channels(Path(test_root), train.channels, tindex)
    return ImageDataset(root.name, train, test, list(index["classes"]))
