"""Stopping the server mid-run, against ndif's real API: ``make test-ndif`` starts spare API fronts on
the stack's Redis (their requests run on the stack's model actor) and each test here stops one while
``cdsl run --remote`` waits on it.  The run must end with one clear error naming the host and the
request, exit as every failed remote run does, and leave nothing behind: no partial report on stdout,
no file.  Skipped without a front to stop (see conftest.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from constraintdsl.cli.common import EXIT_INVALID
from tests.remote.conftest import Victim

# long enough that the run is still going when the front is stopped (about 50 ms a token on a 2-core CPU),
# short enough to stay within the tiny model's 256 positions
TOKENS = 200


def _stop(victim: Victim, how: str) -> None:
    # the launcher started the front in its own session: its PID leads a process group of its own
    assert os.getpgid(victim.pid) == victim.pid, f"pid {victim.pid} does not lead its own process group"
    if how == "stopped":
        os.kill(victim.pid, signal.SIGTERM)  # gunicorn's ordinary shutdown
    else:
        os.killpg(victim.pid, signal.SIGKILL)  # master and worker gone at once, as in a crash


def _refuses(host: str, within: float = 10.0) -> bool:
    """Whether ``host`` refuses connections, at the latest ``within`` seconds from now."""
    address = urlsplit(host)
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection((address.hostname or "", address.port or 80), timeout=5):
                pass
        except ConnectionRefusedError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_server_stopped_mid_run_gives_a_clear_error_and_leaves_nothing_half_written(
    tiny_folder: Path, ndif_victim: Victim, tmp_path: Path, how: str
) -> None:
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    np.save(work / "a.npy", np.random.default_rng(1).standard_normal(32).astype(np.float32))
    (work / "spec.cdsl").write_text('version 1\nconcept a from file "a.npy"\nsteer a by 2 raw at layer 1\n')
    before = _files(tmp_path)
    env = {
        **os.environ,
        "CONSTRAINTDSL_CACHE": str(tmp_path / "cache"),
        "TMPDIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
    }
    argv = [
        *(sys.executable, "-m", "constraintdsl", "run", "spec.cdsl", "--model", str(tiny_folder)),
        *("--host", ndif_victim.host, "--prompt", "Hi", "--max-new-tokens", str(TOKENS)),
        *("--format", "json", "--timeout", "120"),
    ]
    cli = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(300, cli.kill)  # a hung client fails the test instead of the whole suite
    watchdog.start()
    try:
        assert cli.stderr is not None
        seen: list[str] = []
        running = None
        for line in cli.stderr:  # progress lines: "[REQUEST_ID] status description"
            seen.append(line)
            running = re.match(r"\[(\w+)\] running\b", line)
            if running:
                _stop(ndif_victim, how)
                break
        out, rest = cli.communicate(timeout=240)
    finally:
        watchdog.cancel()
    err = "".join(seen) + rest
    assert running is not None, f"the run never started on {ndif_victim.host}:\n{err}"
    request_id = running.group(1)

    assert _refuses(ndif_victim.host)  # the front really is gone
    assert cli.returncode == EXIT_INVALID, err  # as every other failed remote run: a UserError
    host = ndif_victim.host
    assert f"{host}: error: the connection to NDIF at {host} was lost while request {request_id} was running" in err
    assert "no result was kept" in err and "hint: check that the server is still up" in err
    assert "Traceback" not in err and "internal error" not in err
    assert out == ""  # no partial report
    assert _files(tmp_path) == before  # no result file, no temp file, no cache entry
