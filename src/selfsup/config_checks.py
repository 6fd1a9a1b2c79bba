"""Value ranges of configuration fields: declared once, on the field, and checked by one function.

A config dataclass (a :class:`~selfsup.config.RunConfig` section or a method's ``Config``) declares each field's
valid values where it declares the field::

    temperature: float = checked(0.2, gt=0)
    queue_size: int = checked(65536, ge=1, cap=QUEUE_CAP)
    nan_policy: str = checked("stop", choices=("stop", "skip"))

and :func:`check_values` checks every field of such an object against its declaration (then calls the object's
``validate()`` for what one field cannot say, e.g. ``crop_scale_min <= crop_scale_max``). The config door,
:func:`selfsup.config.from_dict` (hence :func:`~selfsup.config.build_run_config` and ``build_method``), calls it
for every object it builds, so a bad value is a one-line :class:`ConfigError` naming the key before any work,
never a ``ZeroDivisionError`` or a NaN schedule an hour into a run, nor a multi-GB allocation.

``cap`` is an upper bound against unbounded cost rather than a property of the value: a width of 10**6 or a queue
of 10**12 keys is refused before anything is allocated. The caps are listed in ``docs/reliability.md``.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

# caps against unbounded cost (see the module docstring); generous next to every published setting
WIDTH_CAP = 16.0  # backbone width multiplier
IMAGE_CAP = 4096  # px: data.image_size, augment.size, augment.local_size
VIEWS_CAP = 64  # augment.n_views, augment.local_crops
DIM_CAP = 65536  # feature dimensions, hidden sizes, prototypes, codebook entries (DINO's K is 65,536)
QUEUE_CAP = 2 ** 24  # queued keys / memory-bank negatives
SEED_CAP = 2 ** 63  # torch seeds are 64-bit; per-rank streams add small offsets
COUNT_CAP = 2 ** 31  # steps, epochs, intervals


@dataclass(frozen=True)
class Limits:
    """The valid values of one field. Bounds apply to numbers (each element of a tuple); None is always valid
    for an optional field (its default: the preset's or the method's value)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    cap: float | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    nonempty: bool = False
    hint: str = ""  # appended to the message, e.g. "0: no head"

    def interval(self) -> str:
        lo = f"({_num(self.gt)}" if self.gt is not None else f"[{_num(self.ge)}" if self.ge is not None else ""
        hi = f"{_num(self.lt)})" if self.lt is not None else f"{_num(self.le)}]" if self.le is not None else ""
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>' if lo[0] == '(' else '>='} {lo[1:]}"
        return f"{'<' if hi[-1] == ')' else '<='} {hi[:-1]}"


def _num(x: float) -> str:
    """``0.5``, ``16``, ``2**63``: bounds as a user would write them."""
    if float(x).is_integer():
        n = int(x)
        return f"2**{n.bit_length() - 1}" if n >= 2 ** 16 and n & (n - 1) == 0 else str(n)
    return f"{x:g}"


def checked(default: T, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
            le: float | None = None, cap: float | None = None, choices: tuple[str, ...] | None = None,
            pattern: str | None = None, nonempty: bool = False, hint: str = "") -> T:
    """A dataclass field with a default and its valid values (see :class:`Limits`)."""
    lim = Limits(gt, ge, lt, le, cap, choices, pattern, nonempty, hint)
    return field(default=default, metadata={"limits": lim})


def _check_one(key: str, v: Any, lim: Limits | None) -> None:
    if isinstance(v, bool) or v is None:
        return
    if isinstance(v, (tuple, list)):
        for i, item in enumerate(v):
            _check_one(f"{key}[{i}]", item, lim)
        return
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number, got {v}")
        if lim is None:
            return
        low_ok = (lim.gt is None or v > lim.gt) and (lim.ge is None or v >= lim.ge)
        high_ok = (lim.lt is None or v < lim.lt) and (lim.le is None or v <= lim.le)
        if not (low_ok and high_ok):
            raise ConfigError(f"{key} must be {lim.interval()}, got {v}" + (f" ({lim.hint})" if lim.hint else ""))
        if lim.cap is not None and v > lim.cap:
            raise ConfigError(f"{key} must be <= {_num(lim.cap)} (a cap against unbounded memory and time), got {v}")
        return
    if isinstance(v, str) and lim is not None:
        if lim.nonempty and not v:
            raise ConfigError(f"{key} must not be empty" + (f" ({lim.hint})" if lim.hint else ""))
        if lim.choices is not None and v not in lim.choices:
            raise ConfigError(f"{key} must be one of {', '.join(lim.choices)}, got {v!r}")
        if lim.pattern is not None and not re.fullmatch(lim.pattern, v):
            raise ConfigError(f"{key} must be {lim.hint or 'of the form ' + lim.pattern}, got {v!r}")


def check_values(obj: Any, prefix: str = "") -> Any:
    """Check every field of the config dataclass ``obj`` against its declared :class:`Limits`, then run
    ``obj.validate()`` (cross-field rules) if it has one. Raises :class:`ConfigError` naming ``prefix + field``;
    returns ``obj``. Floats must be finite whether or not the field declares limits."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            continue  # a nested section is checked when it is built
        _check_one(prefix + f.name, v, f.metadata.get("limits"))
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError:
            raise
        except ValueError as e:  # validate() may raise a plain ValueError naming the option
            raise ConfigError(str(e)) from None
    return obj


def dim(default: int, *, ge: int = 1, hint: str = "") -> int:
    """A size field (feature dimension, hidden width, number of prototypes ...): >= ``ge``, capped at DIM_CAP."""
    return checked(default, ge=ge, cap=DIM_CAP, hint=hint)
