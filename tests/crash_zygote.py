"""A fork server for tests/engine/test_crash_resume.py: imports torch and selfsup once, then forks one training process
per request, so each of the many kill/resume segments skips the multi-second import.

Protocol (one JSON object per line): stdin ``{"argv": [...], "log": "file"}`` → stdout ``{"pid": N}`` when the
child started; then stdin ``{"end": "kill"}`` (SIGKILL it now) or ``{"end": "wait"}`` → stdout ``{"status": S}``
(``os.waitpid`` status). Only this parent kills and reaps, so the pid cannot have been reused by another
process when the kill is sent. The child runs ``selfsup.cli.main.main(argv)`` (what ``python -m selfsup``
runs) with stdout and stderr in ``log``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import traceback

import torch

torch.set_num_threads(1)
from selfsup.cli.main import main  # noqa: E402
from selfsup.engine import trainer  # noqa: E402,F401
from selfsup.registry import METHODS  # noqa: E402

METHODS.names()  # import every registered module before forking
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # its first use imports torch._dynamo (seconds)

child = 0
for line in sys.stdin:
    req = json.loads(line)
    if "end" in req:
        if req["end"] == "kill":
            os.kill(child, signal.SIGKILL)  # our unreaped child (or its zombie): never another process
        _, status = os.waitpid(child, 0)
        print(json.dumps({"status": status}), flush=True)
        continue
    child = os.fork()
    if child == 0:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            rc = main(req["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            rc = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc or 0)
    print(json.dumps({"pid": child}), flush=True)
