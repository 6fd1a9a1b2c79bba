"""A checkpoint never runs code: pickles that would execute something are refused with a clear message."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from selfsup.cli.main import main
from selfsup.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from selfsup.engine.rundir import RunDirError, latest_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src" / "selfsup"


class Payload:
    """Unpickling this calls exec(...), which writes the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"method": {"w": torch.zeros(2)}, "step": 3, "evil": Payload(marker)}, path)
    return path


def test_the_payload_is_real(tmp_path):
    """Control: an unsafe load really runs the code (so the refusal below is meaningful)."""
    marker = tmp_path / "marker"
    ck = malicious_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(ck, weights_only=False)
    assert marker.read_text() == "pwned"


def test_code_running_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "marker"
    ck = malicious_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: loading it would execute code"):
        load_checkpoint(ck)
    assert not marker.exists()


def test_run_with_only_a_malicious_checkpoint(tmp_path, capsys):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    malicious_checkpoint(run / "checkpoints" / "step-00000003.pt", marker)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        with pytest.raises(RunDirError, match="no readable checkpoint .*refused: loading it would execute code"):
            latest_checkpoint(run)
    for argv in (["eval", str(run), "--no-baseline"], ["export", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("selfsup: error:") and "refused: loading it would execute code" in err
        assert len(err.strip().splitlines()) == 1, err  # no warning about the one checkpoint the error names
    assert not marker.exists()


def test_malicious_newest_checkpoint_is_skipped_for_an_older_good_one(tmp_path):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    save_checkpoint({"step": 2, "w": torch.ones(2)}, run / "checkpoints" / "step-00000002.pt")
    malicious_checkpoint(run / "checkpoints" / "step-00000003.pt", marker)
    with pytest.warns(UserWarning, match="step-00000003.pt"):
        path, ck = latest_checkpoint(run)
    assert path.name == "step-00000002.pt" and ck["step"] == 2
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04" + b"\x00" * 40])
def test_garbage_checkpoint_is_a_one_line_error(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad\.pt: not a readable checkpoint"):
        load_checkpoint(p)


def test_every_load_in_the_source_is_safe():
    """Static guard for future code: torch.load only with weights_only=True, np.load never with pickles."""
    offenders = []
    for f in SRC.rglob("*.py"):
        text = f.read_text()
        for m in re.finditer(r"\btorch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in m.group(0):
                offenders.append(f"{f.name}: {m.group(0)[:60]}")
        for m in re.finditer(r"\bnp\.load\(([^()]|\([^()]*\))*\)", text):
            if "allow_pickle=False" not in m.group(0):
                offenders.append(f"{f.name}: {m.group(0)[:60]}")
        if re.search(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load\(", text):
            offenders.append(f"{f.name}: pickle load")
    assert not offenders, offenders


# ------------------------------------------------------------------ every payload, every pickle protocol
def _payloads(marker: Path) -> dict:
    from badinput_runs import payload_kinds  # tests/ is on the path, as for conftest

    return payload_kinds(marker)


PAYLOAD_NAMES = ("os.system", "posix.system", "subprocess.call", "builtins.exec", "builtins.eval", "os.remove",
                 "shutil.rmtree", "sys.exit", "os.kill", "builtins.getattr", "builtins.__import__")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
def test_every_payload_gets_selfsups_refusal_line(tmp_path, payload, protocol):
    """os.system / posix.system / sys.exit / exec ... in a checkpoint, under every pickle protocol torch writes:
    our one line (never torch's advice to retry with weights_only=False), and nothing ran."""
    from badinput_runs import Payload

    marker = tmp_path / "ran"
    marker.with_suffix(".keep").write_text("must survive")
    marker.with_suffix(".keepdir").mkdir()
    fn, args = _payloads(marker)[payload]
    ck = tmp_path / "evil.pt"
    torch.save({"method": {"w": torch.zeros(2)}, "step": 3, "x": Payload(fn, args)}, ck, pickle_protocol=protocol)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    msg = str(e.value)
    imported = f"{fn.__module__}.{fn.__name__}"  # as pickled: os.system is posix.system
    assert msg.startswith(f"{ck}: refused: loading it would execute code (it imports {imported})"), msg
    assert "\n" not in msg and "weights_only" not in msg and "will likely succeed" not in msg
    assert not marker.exists() and marker.with_suffix(".keep").exists() and marker.with_suffix(".keepdir").is_dir()


def test_the_os_system_payload_is_real(tmp_path):
    """Control: an unsafe load of the os.system payload really runs the command."""
    from badinput_runs import Payload

    marker = tmp_path / "ran"
    ck = tmp_path / "evil.pt"
    torch.save({"x": Payload(*_payloads(marker)["os.system"])}, ck)
    torch.load(ck, weights_only=False)
    assert marker.exists()


def test_torchs_allowed_types_still_load(tmp_path):
    """The scan only refuses what torch refuses: sets, OrderedDicts, tensors and plain data load (protocol 2)."""
    from collections import OrderedDict

    ck = tmp_path / "ok.pt"
    torch.save({"s": {1, 2}, "o": OrderedDict(a=torch.ones(2)), "t": (1, "x", None, 2.5)}, ck)
    out = load_checkpoint(ck)
    assert out["s"] == {1, 2} and torch.equal(out["o"]["a"], torch.ones(2))
