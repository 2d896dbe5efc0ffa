"""The remote suite runs only against a server: ``--ndif-host URL`` (when pytest is pointed at this
folder) or ``CDSL_NDIF_HOST``.  ``make test-ndif`` starts a local NDIF and sets both, with the model
folders it deployed in ``CDSL_NDIF_TINY`` and ``CDSL_NDIF_SMOLLM2``, and hands the stopped-server tests
the API fronts they may stop with ``--ndif-victim-host URL --ndif-victim-pid PID`` (repeated, in pairs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ndif-host", default=None, help="URL of an NDIF server for tests/remote")
    parser.addoption(
        "--ndif-no-skips",
        action="store_true",
        default=False,
        help="a skipped remote test fails (make test-ndif: against a running server every test must run)",
    )
    parser.addoption(
        "--ndif-victim-host",
        action="append",
        default=[],
        help="URL of an NDIF API front that a test may stop (repeatable; pairs with --ndif-victim-pid)",
    )
    parser.addoption(
        "--ndif-victim-pid",
        action="append",
        type=int,
        default=[],
        help="PID of that front's server process, the leader of its own process group",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With ``--ndif-no-skips`` a skip is a failure that gives the skip's reason: a wrong deployed-model
    variable or a missing server must fail the suite, not turn it into skips that pass."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.config.getoption("--ndif-no-skips") and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under --ndif-no-skips (every remote test must run): {reason}"


@dataclass(frozen=True)
class Victim:
    """An NDIF API front a test may stop: its URL and the PID that leads its process group."""

    host: str
    pid: int


@pytest.fixture(scope="session")
def ndif_victims(request: pytest.FixtureRequest) -> list[Victim]:
    """The spare fronts not yet used; each stopped-server test takes one (a stopped front cannot serve twice)."""
    hosts: list[str] = request.config.getoption("--ndif-victim-host")
    pids: list[int] = request.config.getoption("--ndif-victim-pid")
    if len(hosts) != len(pids):
        raise pytest.UsageError("give --ndif-victim-host and --ndif-victim-pid in pairs")
    return [Victim(host.rstrip("/"), pid) for host, pid in zip(hosts, pids, strict=True)]


@pytest.fixture
def ndif_victim(ndif_victims: list[Victim]) -> Victim:
    """One spare front for this test alone."""
    if not ndif_victims:
        pytest.skip(
            "no NDIF API front to stop: give --ndif-victim-host URL --ndif-victim-pid PID (make test-ndif does)"
        )
    return ndif_victims.pop(0)


@pytest.fixture(scope="session")
def ndif_host(request: pytest.FixtureRequest) -> str:
    host = request.config.getoption("--ndif-host", default=None) or os.environ.get("CDSL_NDIF_HOST")
    if not host:
        pytest.skip("no NDIF server: give --ndif-host URL or CDSL_NDIF_HOST (make test-ndif starts one)")
    return str(host)


def _folder(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value or not Path(value).is_dir():
        pytest.skip(f"{variable} does not name the deployed model's folder")
    return Path(value)


@pytest.fixture(scope="session")
def tiny_folder(ndif_host: str) -> Path:
    """The folder of the tiny Llama the server hosts (its path is the model id)."""
    return _folder("CDSL_NDIF_TINY")


@pytest.fixture(scope="session")
def tiny_model(ndif_host: str) -> Any:
    """The tiny Llama the server hosts, loaded locally from the same folder."""
    from constraintdsl.models.loading import load_model

    torch.set_num_threads(1)
    return load_model(str(_folder("CDSL_NDIF_TINY")))


@pytest.fixture(scope="session")
def smollm2(ndif_host: str) -> Any:
    """SmolLM2 as the server hosts it (its converted folder), loaded locally."""
    from constraintdsl.models.loading import load_model

    folder = _folder("CDSL_NDIF_SMOLLM2")
    model = load_model("smollm2")
    if Path(model.repo_id).resolve() != folder.resolve():
        pytest.skip("the deployed SmolLM2 folder is not this checkout's embedded model")
    return model


@pytest.fixture(scope="session")
def big_folder(ndif_host: str) -> Path:
    """The folder of the scale model the server hosts (``local_ndif.py --big``: 1.13B parameters, float32,
    4.54 GB); never loaded in this process."""
    return _folder("CDSL_NDIF_BIG")
