"""The remote suite runs only against a server: ``--ndif-host URL`` (when pytest is pointed at this
folder) or ``CDSL_NDIF_HOST``.  ``make test-ndif`` starts a local NDIF and sets both, with the model
folders it deployed in ``CDSL_NDIF_TINY`` and ``CDSL_NDIF_SMOLLM2``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ndif-host", default=None, help="URL of an NDIF server for tests/remote")


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
def tiny_model(ndif_host: str) -> Any:
    """The tiny Llama the server hosts, loaded locally from the same folder."""
    from constraintdsl.models import load_model

    torch.set_num_threads(1)
    return load_model(str(_folder("CDSL_NDIF_TINY")))


@pytest.fixture(scope="session")
def smollm2(ndif_host: str) -> Any:
    """SmolLM2 as the server hosts it (its converted folder), loaded locally."""
    from constraintdsl.models import load_model

    folder = _folder("CDSL_NDIF_SMOLLM2")
    model = load_model("smollm2")
    if Path(model.repo_id).resolve() != folder.resolve():
        pytest.skip("the deployed SmolLM2 folder is not this checkout's embedded model")
    return model
