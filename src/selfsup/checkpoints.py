"""Reading checkpoints safely: one file (``weights_only=True``), or the newest readable one of a run directory.

The lowest layer that touches checkpoint files, so that any layer may read a run: the engine (resume, export),
evaluation, viz, studies and methods (BEiT loads its tokenizer run). Writing is the engine's
(:mod:`selfsup.engine.checkpoint`).

Loading never executes code: every load in selfsup goes through :func:`load_checkpoint`
(``torch.load(weights_only=True)``). A file whose pickle imports anything outside torch's allowlist
(``os.system``, ``posix.*``, ``sys.*``, ``builtins.exec``, a class of another program) is refused with selfsup's
own line, ``FILE: refused: loading it would execute code (it imports NAME)``, never with torch's advice to retry
with ``weights_only=False``. A file that is not a checkpoint at all (empty, cut, text, a zip of something else)
is ``FILE: not a readable checkpoint (...)``. What a *selfsup* checkpoint must hold is checked by
:func:`check_checkpoint`, and a state that does not fit its model is a line from :func:`load_method_state`.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, RunDirError

CHECKPOINT_DIR = "checkpoints"  # a run's checkpoints: RUN/checkpoints/step-<8 digits>.pt
REFUSED = "refused: loading it would execute code"
_GLOBAL_OPS = ("GLOBAL", "INST")  # "module name" in one argument; STACK_GLOBAL takes the two strings pushed before


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> Any:
    """Load with ``weights_only=True``: tensors and plain data only; anything else is a one-line
    :class:`CheckpointError` naming the file (``refused: loading it would execute code`` for a pickle that imports
    something torch does not allow)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        imported = _forbidden_import(path) or _named_global(str(e))
        if imported:
            raise CheckpointError(f"{path}: {REFUSED} (it imports {imported}); selfsup loads only tensors and "
                                  "plain data") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({_reason(e)})") from None
    except MemoryError:
        raise CheckpointError(f"{path}: not a readable checkpoint (it does not fit in memory)") from None
    except Exception as e:  # truncated zip, not a checkpoint, a pickle cut short, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({_what_file(path) or _reason(e)})") from None


def _what_file(path: Path) -> str | None:
    """Why a file that torch cannot open is not a checkpoint, from its first bytes; None when unsure."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            return "the file is empty"
        if head.startswith(b"PK"):
            if not zipfile.is_zipfile(path):
                return "a truncated or damaged zip archive"
            with zipfile.ZipFile(path) as z:
                if not any(n.endswith("data.pkl") for n in z.namelist()):
                    return "a zip archive without data.pkl: not written by torch.save"
            return None
        if head[:1] != b"\x80":
            return "neither a torch zip archive nor a pickle: text or another format"
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return None


def _reason(e: BaseException) -> str:
    """One line from an exception, without torch's advice to load unsafely."""
    text = str(e)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    lines = [found.group(1)] if found else [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if "weights_only" not in ln and "torch.load" not in ln and "documentation" not in ln]
    line = lines[-1] if lines else ""
    line = line if len(line) <= 200 else line[:197] + "..."
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _named_global(message: str) -> str | None:
    found = re.search(r"GLOBAL (\S+)", message)
    return found.group(1) if found else None


def _forbidden_import(path: Path) -> str | None:
    """The first global the file's pickle imports that torch's weights-only loader does not allow, read with
    ``pickletools`` (nothing is executed); None when there is none or the pickle cannot be read."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # private API moved: keep only the torch namespace
        allowed = set()
    for name in _pickle_globals(path):
        if name not in allowed and not (not allowed and name.startswith("torch.")):
            return name
    return None


def _pickle_globals(path: Path, limit: int = 1 << 26) -> list[str]:
    """Globals referenced by the pickles in ``path`` (a torch zip's ``*.pkl`` members, or a legacy file's
    concatenated pickles), in order."""
    blobs: list[bytes] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs = [z.read(i) for i in z.infolist() if i.filename.endswith(".pkl") and i.file_size <= limit]
        elif path.stat().st_size <= limit:
            blobs = [path.read_bytes()]
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return []
    names: list[str] = []
    for blob in blobs:
        f = io.BytesIO(blob)
        while f.tell() < len(blob):
            start = f.tell()
            strings: list[str] = []
            try:
                for op, arg, _ in pickletools.genops(f):
                    if op.name in _GLOBAL_OPS and isinstance(arg, str) and " " in arg:
                        names.append(_python3_name(*arg.split(" ", 1)))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(_python3_name(strings[-2], strings[-1]))
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:
                break
            if f.tell() == start:
                break
    return names


def _python3_name(module: str, name: str) -> str:
    """``__builtin__ exec`` (protocol <= 2) → ``builtins.exec``, as the unpickler's ``fix_imports`` reads it."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def check_checkpoint(ckpt: Any, path: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """``ckpt`` as a selfsup training checkpoint, or a one-line :class:`CheckpointError` naming ``path`` and what
    is wrong (a plain state_dict, a list, a tensor, a dict without ``method``, another program's checkpoint ...).
    ``resume`` also requires what training needs to continue (optimizer, RNG states, schedule length)."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a selfsup checkpoint ({what})")

    if not isinstance(ckpt, Mapping):
        raise bad(f"it holds {_kind(ckpt)}, not a mapping")
    if "method" not in ckpt:
        keys = [str(k) for k in list(ckpt)[:3]]
        tensors = bool(ckpt) and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        hint = "; a bare state_dict of weights" if tensors else ""
        raise bad(f"no 'method' entry; keys: {', '.join(keys) or '(none)'}{', ...' if len(ckpt) > 3 else ''}{hint}")
    state = ckpt["method"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise bad(f"'method' holds {_kind(state)}, not a mapping of names to tensors")
    step = ckpt.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"'step' is {_kind(step)}, not a step number")
    cfg = ckpt.get("config")
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("method"), Mapping) \
            or not isinstance(cfg["method"].get("name"), str) or not isinstance(cfg.get("backbone"), Mapping):
        raise bad("'config' is missing or is not a run configuration with method and backbone")
    info = ckpt.get("data")
    if info is not None and not _data_info_ok(info):
        raise bad("'data' is not {channels, image_size, num_train} of a dataset")
    if resume:
        for key, kind in (("optimizer", Mapping), ("rng", Mapping), ("total_steps", int)):
            if not isinstance(ckpt.get(key), kind):
                raise bad(f"'{key}' is {_kind(ckpt.get(key))}; resuming needs the training state")
    return dict(ckpt)


def _data_info_ok(info: Any) -> bool:
    if not isinstance(info, Mapping):
        return False
    try:
        size = list(info["image_size"])
        return (1 <= int(info["channels"]) <= 64 and len(size) == 2
                and all(1 <= int(s) <= 1 << 14 for s in size) and 1 <= int(info["num_train"]) <= 1 << 31)
    except (KeyError, TypeError, ValueError, IndexError):
        return False


def _kind(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)}"
    if v is None:
        return "missing"
    if isinstance(v, (int, float, str, bool)):
        text = repr(v)
        return f"{type(v).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
    return f"a {type(v).__name__}"


def load_method_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """``module.load_state_dict(state)``; a state that does not fit (other method, width, shapes) is a one-line
    :class:`CheckpointError` naming the file and the first differences."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes "
                              f"({_state_diff(module, state) or _reason(e)})") from None


def state_mismatch(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Why ``state`` does not fit ``module`` in a few words (missing, unexpected, mis-shaped keys); "" when it
    fits."""
    return _state_diff(module, state)


def _state_diff(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(v, "shape") and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("shape", shapes)):
        if items:
            parts.append(f"{len(items)} {label}: {', '.join(items[:2])}{', ...' if len(items) > 2 else ''}")
    return "; ".join(parts)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, newest first."""
    d = Path(run_dir) / CHECKPOINT_DIR
    return sorted(d.glob("step-*.pt"), reverse=True) if d.is_dir() else []


def _newest_loading(run_dir: Path, mmap: bool = False) -> tuple[Path | None, Any, list[tuple[Path, str]]]:
    """(path, checkpoint) of the newest checkpoint of ``run_dir`` that loads (None, None when none does), and
    the (path, reason) of each newer one that did not."""
    cands = list_checkpoints(run_dir)
    if not cands:
        raise RunDirError(f"{run_dir}: no checkpoint found (expected {CHECKPOINT_DIR}/step-*.pt); "
                          "pretrain first with `selfsup pretrain --out` this directory")
    skipped: list[tuple[Path, str]] = []
    for p in cands:
        try:
            return p, load_checkpoint(p, mmap=mmap), skipped
        except CheckpointError as e:
            skipped.append((p, str(e)))
    return None, None, skipped


def _warn_skipped(skipped: list[tuple[Path, str]]) -> None:
    for bad, msg in skipped:
        warnings.warn(f"skipping damaged checkpoint {bad.name}: {msg}", stacklevel=3)


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that loads, as it is (no check that it is a selfsup one: the studies and figures
    read their own runs); a damaged one is skipped with a warning."""
    path, ckpt, skipped = _newest_loading(Path(run_dir))
    _warn_skipped(skipped)
    if path is None:
        raise RunDirError(f"{run_dir}: no readable checkpoint ({skipped[0][1]})")
    return path, ckpt


def load_run_checkpoint(run_dir: str | Path, *, resume: bool = False,
                        mmap: bool = False) -> tuple[Path, dict[str, Any]]:
    """(path, checkpoint) of the newest checkpoint of ``run_dir`` that loads, checked to be a selfsup one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory not found: {run_dir}")
    path, ckpt, skipped = _newest_loading(run_dir, mmap)
    if path is None:
        more = f" (and {len(skipped) - 1} older ones)" if len(skipped) > 1 else ""
        raise CheckpointError(f"no readable checkpoint in {run_dir}: {skipped[0][1]}{more}")
    _warn_skipped(skipped)  # only now: when nothing loads, the error above says it once
    return path, check_checkpoint(ckpt, path, resume=resume)
