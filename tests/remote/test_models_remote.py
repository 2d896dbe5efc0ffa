"""What a real NDIF server offers (``make test-ndif`` runs ndif 0.1.2 on loopback): ``cdsl models`` lists the
deployed tiny model as running, a client on another nnsight version is stopped before anything is posted,
and a model the server does not host is answered with the ones it does.  Skipped without a server (see
conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from constraintdsl.cli.app import main
from constraintdsl.models import ndif
from constraintdsl.run import runner
from tests.remote.test_remote_ndif import Requests
from tests.test_concepts import PLAIN
from tests.tiny import tiny_hf, tiny_tokenizer


def test_models_lists_the_deployed_tiny_model_as_running(
    ndif_host: str, tiny_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--host", ndif_host, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    tiny = [m for m in listed if Path(m["repo_id"]) == tiny_folder]
    assert len(tiny) == 1, listed
    assert tiny[0]["state"] == "RUNNING" and tiny[0]["running"] is True and tiny[0]["replicas"] >= 1
    assert main(["models", "--host", ndif_host]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:2] == [str(tiny_folder), "running"] for line in out.splitlines()), out


def test_the_server_runs_this_clients_nnsight_so_the_check_passes(
    ndif_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ndif, "_server_versions", {})
    assert ndif.server_nnsight_version(ndif_host) == ndif.client_nnsight_version()
    ndif.check_versions(ndif_host)


def test_another_client_nnsight_is_stopped_before_anything_is_posted(
    ndif_host: str,
    tiny_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = ndif.server_nnsight_version(ndif_host)
    assert server
    monkeypatch.setattr(ndif, "_server_versions", {})  # asked afresh, as by a new process
    monkeypatch.setattr(ndif, "client_nnsight_version", lambda: "0.0.1")
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    pairs = tmp_path / "tone.yaml"
    pairs.write_text(PLAIN)
    sent = Requests(monkeypatch)
    args = ["concept", "build", "--pairs", str(pairs), "--model", str(tiny_folder), "--no-progress"]
    code = main([*args, "--host", ndif_host, "--timeout", "60"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert sent.posted == 0 and not sent.backends
    assert f"{ndif_host}: error: NDIF at {ndif_host} runs nnsight {server} but this client has nnsight 0.0.1" in err
    assert f"hint: install the server's version: pip install nnsight=={server}" in err
    assert "Traceback" not in err


def test_a_model_the_server_does_not_host_is_answered_with_the_ones_it_does(
    tmp_path: Path, ndif_host: str, tiny_folder: Path
) -> None:
    from constraintdsl.models.loading import load_model

    folder = tmp_path / "not-hosted"
    tiny_hf("llama", seed=3).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    model = load_model(str(folder))
    shutil.rmtree(folder)  # the server cannot load it either
    with pytest.raises(ndif.RemoteFailure) as caught:
        runner.generate(model, None, ["Hi"], max_new_tokens=2, remote=ndif_host, timeout=120)
    error = caught.value
    assert error.kind == "not_hosted", str(error)
    assert error.hint is not None and error.hint.startswith("it hosts ") and f"{tiny_folder} (running)" in error.hint
    assert f"cdsl models --host {ndif_host}" in error.hint
