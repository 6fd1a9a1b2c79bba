"""``torch.compile`` with a fallback to eager mode that covers failures at compile *and* at first call.

``torch.compile(m)`` only wraps the module; the real compilation (and most failures: no C++ compiler, an
unsupported op, a backend bug) happens at the first call. :class:`SafeCompiled` tries the compiled module
once; if that raises, it logs one line and runs eager from then on. Compilation traces before it executes, so
a failed first call has not run the step (no half-applied state updates).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import nn


class SafeCompiled:
    def __init__(self, module: nn.Module, log: Callable[[str], None] | None = None, **compile_kw: Any) -> None:
        self.module = module
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.state = "pending"  # pending → compiled | eager
        try:
            self.compiled = torch.compile(module, **compile_kw)
        except Exception as e:  # platforms without a compiler backend
            self._fallback(e)

    def _fallback(self, e: BaseException) -> None:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        self.log(f"torch.compile failed ({type(e).__name__}: {first[:200]}); running eager")
        self.state = "eager"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.state == "eager":
            return self.module(*args, **kwargs)
        if self.state == "compiled":
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as e:
            self._fallback(e)
            return self.module(*args, **kwargs)
        self.state = "compiled"
        return out
