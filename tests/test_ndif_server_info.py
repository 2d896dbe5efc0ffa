"""What an NDIF server offers, read without a real server: ``cdsl models`` parses ``GET /status``
(running, deploying, cold and junk entries), the client's nnsight is compared with the server's
``GET /env`` before anything is sent, and a model the server does not host gets a hint listing the ones
it does.  The server is a real HTTP server from the standard library on 127.0.0.1 serving canned answers."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from constraintdsl.cli.app import main
from constraintdsl.models import ndif
from constraintdsl.run import runner
from tests.tiny import tiny_hf, tiny_tokenizer

CLIENT = ndif.client_nnsight_version()


def _name(repo_id: str, replica: str = "ed778", task: str = "text-generation") -> str:
    """A ``/status`` deployment name as ndif 0.1.2 writes it: REPLICA:ModelActor:MODEL_KEY."""
    key = json.dumps({"repo_id": repo_id, "revision": None, "task": task})
    return f"{replica}:ModelActor:nnsight.modeling.transformers.TransformersModel:{key}"


STATUS = {
    "deployments": {
        _name("/tmp/x/tiny"): {"application_state": "RUNNING"},
        _name("org/deploying-model", "aa111"): {"application_state": "DEPLOYING"},
        _name("org/big", "bb222"): {
            "application_state": "RUNNING",
            "deployment_level": "HOT",
            "dtype": "torch.bfloat16",
            "n_params": 1_240_000_000,
            "repo_id": "org/big",
        },
        "org/downloaded": {"deployment_level": "COLD", "repo_id": "org/downloaded"},
        "a string, not an object": "RUNNING",
        "no id at all": {"pinned": True},
        "cc333:ModelActor:not a model key": {"application_state": "RUNNING"},
        "dd444:ModelActor:x.Y:[1, 2]": {"application_state": "RUNNING"},
        "": {"application_state": "RUNNING"},
    },
    "cluster": {"nodes": {}},
}


class Server:
    """A loopback HTTP server: canned answers by path, and every request it got (method, path, headers)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.hits: list[tuple[str, str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.hits.append((self.command, self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                code, body = server.routes.get(self.path, (404, b'{"detail": "Not Found"}'))
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, path: str, body: Any, code: int = 200) -> None:
        self.routes[path] = (code, body if isinstance(body, bytes) else json.dumps(body).encode())

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.hits if m == method and p == path)


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    running.thread.start()
    try:
        yield running
    finally:
        running.httpd.shutdown()
        running.httpd.server_close()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No version read in another test, and no API key from the environment."""
    monkeypatch.setattr(ndif, "_server_versions", {})
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(ndif.CONFIG.API, "APIKEY", None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cdsl(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- /status --------------------------------------------------------------------------------------


def test_models_lists_each_hosted_model_with_its_state(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    server.answer("/status", STATUS)
    code, out, err = _cdsl(["models", "--host", server.host], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[4:] if line.strip()}
    assert rows == {
        "/tmp/x/tiny": ["running", "-", "-", "-"],
        "org/big": ["running", "hot", "bfloat16", "1.24B"],
        "org/deploying-model": ["deploying", "-", "-", "-"],
        "org/downloaded": ["cold", "cold", "-", "-"],
    }
    assert out.startswith(f"NDIF at {server.host}: 4 model(s), 2 running\n")
    assert server.count("GET", "/status") == 1 and not server.count("POST", "/request")


def test_models_json_is_a_list_of_objects_naming_the_model_and_whether_it_runs(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    server.answer("/status", STATUS)
    code, out, err = _cdsl(["models", "--host", server.host + "/", "--json"], capsys)
    assert code == 0, err
    listed = json.loads(out)
    assert isinstance(listed, list) and len(listed) == 4
    by_id = {m["repo_id"]: m for m in listed}
    assert by_id["/tmp/x/tiny"]["running"] is True and by_id["/tmp/x/tiny"]["task"] == "text-generation"
    assert by_id["org/deploying-model"]["state"] == "DEPLOYING" and by_id["org/deploying-model"]["running"] is False
    assert by_id["org/downloaded"] == {**by_id["org/downloaded"], "state": "COLD", "running": False, "replicas": 0}
    assert by_id["org/big"]["n_params"] == 1_240_000_000 and by_id["org/big"]["dtype"] == "torch.bfloat16"


def test_replicas_of_one_model_fold_into_its_healthiest_state() -> None:
    status = {
        "deployments": {
            _name("org/m", "r1"): {"application_state": "UNHEALTHY"},
            _name("org/m", "r2"): {"application_state": "RUNNING"},
            _name("org/m", "r3"): {"application_state": "DEPLOYING", "dtype": "float16"},
            _name("org/m", "r4", task="image-to-text"): {"application_state": "DEPLOYING"},
        }
    }
    models = ndif.parse_status(status)
    assert [(m.repo_id, m.task, m.state, m.replicas) for m in models] == [
        ("org/m", "text-generation", "RUNNING", 3),
        ("org/m", "image-to-text", "DEPLOYING", 1),
    ]
    assert models[0].dtype == "float16"  # a detail any replica knows is kept


@pytest.mark.parametrize(
    "answer",
    [None, [], "text", 7, {}, {"deployments": None}, {"deployments": 5}, {"deployments": "x"}, {"cluster": {}}],
)
def test_an_answer_of_an_unknown_shape_lists_nothing_instead_of_failing(answer: Any) -> None:
    assert ndif.parse_status(answer) == []


def test_junk_entries_are_skipped_and_the_rest_still_listed() -> None:
    models = ndif.parse_status(STATUS)
    assert sorted(m.repo_id for m in models) == ["/tmp/x/tiny", "org/big", "org/deploying-model", "org/downloaded"]
    listed = ndif.parse_status({"deployments": [{"model_key": _name("org/l").split(":ModelActor:")[1]}, 3]})
    assert [m.repo_id for m in listed] == ["org/l"]  # a list of entries is read too


def test_models_without_remote_or_host_is_a_usage_error_that_says_what_it_needs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _cdsl(["models"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("--remote: error: `cdsl models` lists the models an NDIF server hosts")
    assert "--host URL" in err and "Traceback" not in err


def test_models_sends_the_api_key_header_when_one_is_set(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.answer("/status", STATUS)
    monkeypatch.setenv("NDIF_API_KEY", "k-123")
    assert _cdsl(["models", "--host", server.host], capsys)[0] == 0
    headers = {k.lower(): v for k, v in server.hits[-1][2].items()}
    assert headers.get("ndif-api-key") == "k-123"


def test_models_with_remote_asks_the_host_ndif_host_names(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server.answer("/status", STATUS)
    monkeypatch.setenv("NDIF_HOST", server.host)
    code, out, _ = _cdsl(["models", "--remote"], capsys)
    assert code == 0 and "org/downloaded" in out


def test_a_server_that_lists_nothing_says_so(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    server.answer("/status", {"deployments": {}, "cluster": {}})
    assert _cdsl(["models", "--host", server.host], capsys)[:2] == (0, f"NDIF at {server.host} lists no models\n")
    assert _cdsl(["models", "--host", server.host, "--json"], capsys)[:2] == (0, "[]\n")


# -- network failures of /status --------------------------------------------------------------------


def test_a_refused_connection_is_one_clear_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    host = f"http://127.0.0.1:{_free_port()}"
    code, _, err = _cdsl(["models", "--host", host], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"{host}: error: could not connect to NDIF at {host}: connection refused",
        "hint: is the server running? check --host / NDIF_HOST",
    ]


def test_a_server_that_never_answers_times_out_within_the_bound() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        host = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.perf_counter()
        with pytest.raises(ndif.RemoteFailure) as caught:
            ndif.hosted_models(host, timeout=0.5)
    assert caught.value.kind == "timeout" and time.perf_counter() - started < 5
    assert caught.value.message == f"NDIF at {host} did not answer GET /status within 0.5 s"
    assert ndif.SERVER_INFO_TIMEOUT <= 10  # the default bound is a few seconds


@pytest.mark.parametrize(
    ("code", "body", "kind", "words"),
    [
        (503, b'{"detail": "Could not retrieve cluster status."}', "rejected", "HTTP 503: Could not retrieve cluster"),
        (200, b"<html>not an NDIF</html>", "rejected", "with something that is not JSON"),
        (401, b'{"detail": "Missing API key."}', "auth", "refused the API key (HTTP 401)"),
        (404, b'{"detail": "Not Found"}', "rejected", "HTTP 404"),
    ],
)
def test_an_error_answer_to_status_is_a_clear_error_of_its_kind(
    server: Server, capsys: pytest.CaptureFixture[str], code: int, body: bytes, kind: str, words: str
) -> None:
    server.answer("/status", body, code)
    with pytest.raises(ndif.RemoteFailure) as caught:
        ndif.hosted_models(server.host)
    assert caught.value.kind == kind and words in caught.value.message, caught.value.message
    exit_code, _, err = _cdsl(["models", "--host", server.host], capsys)
    assert exit_code == 2 and err.startswith(f"{server.host}: error: ") and "Traceback" not in err


# -- the nnsight version, before anything is sent ---------------------------------------------------


def _env(nnsight: str | None) -> dict[str, Any]:
    packages = {"torch": "2.13.0+cpu", "transformers": "5.22.2"}
    return {"python_version": "3.11.7", "packages": packages if nnsight is None else {**packages, "nnsight": nnsight}}


def test_another_nnsight_on_the_server_is_one_clear_error_naming_both_versions(server: Server) -> None:
    server.answer("/env", _env("0.7.0"))
    with pytest.raises(ndif.RemoteFailure) as caught:
        ndif.check_versions(server.host)
    error = caught.value
    assert error.kind == "version" and error.where == server.host
    assert error.message == (
        f"NDIF at {server.host} runs nnsight 0.7.0 but this client has nnsight {CLIENT}; "
        "a request from another nnsight version cannot run there, so nothing was sent"
    )
    assert error.hint == "install the server's version: pip install nnsight==0.7.0"
    assert "\n" not in error.message


def test_the_same_nnsight_passes_and_the_server_is_asked_once_per_host(server: Server) -> None:
    server.answer("/env", _env(CLIENT))
    ndif.check_versions(server.host)
    ndif.check_versions(server.host)
    assert server.count("GET", "/env") == 1


def test_the_client_version_is_compared_each_time_against_the_remembered_server_version(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.answer("/env", _env("0.8.1"))
    monkeypatch.setattr(ndif, "client_nnsight_version", lambda: "0.8.1")
    ndif.check_versions(server.host)
    monkeypatch.setattr(ndif, "client_nnsight_version", lambda: "0.9.0")
    with pytest.raises(ndif.RemoteFailure) as caught:
        ndif.check_versions(server.host)
    assert "runs nnsight 0.8.1 but this client has nnsight 0.9.0" in caught.value.message
    assert server.count("GET", "/env") == 1


@pytest.mark.parametrize(
    ("code", "body"),
    [
        (200, json.dumps(_env(None)).encode()),  # no nnsight listed
        (200, b'{"python_version": "3.11"}'),
        (200, b"[1, 2]"),
        (200, b"not json"),
        (404, b'{"detail": "Not Found"}'),  # a server without /env
        (503, b'{"detail": "Could not retrieve cluster env."}'),
        (403, b'{"detail": "Invalid API key."}'),
    ],
)
def test_an_env_that_cannot_be_read_blocks_nothing(server: Server, code: int, body: bytes) -> None:
    server.answer("/env", body, code)
    ndif.check_versions(server.host)
    assert ndif.server_nnsight_version(server.host) is None


def test_an_unreachable_env_blocks_nothing_and_waits_at_most_the_request_timeout() -> None:
    ndif.check_versions(f"http://127.0.0.1:{_free_port()}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        started = time.perf_counter()
        ndif.check_versions(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
        assert time.perf_counter() - started < 3


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_hf("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_a_run_against_a_server_on_another_nnsight_fails_before_anything_is_posted(
    server: Server, saved_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from constraintdsl.models.loading import load_model

    server.answer("/env", _env("0.7.0"))
    with pytest.raises(ndif.RemoteFailure) as caught:
        runner.generate(load_model(str(saved_model)), None, "Hi", max_new_tokens=2, remote=server.host, timeout=10)
    assert caught.value.kind == "version"
    assert [(m, p) for m, p, _ in server.hits] == [("GET", "/env")]  # no POST /request, no websocket


# -- a model the server does not host ---------------------------------------------------------------


def _not_hosted(host: str) -> ndif.RemoteFailure:
    backend = ndif.NdifBackend(_name("/tmp/gone").split(":ModelActor:")[1], host)
    return backend._server_failure("req-1", "Traceback …\nValueError: Could not deploy model /tmp/gone")


def test_a_model_the_server_does_not_host_gets_a_hint_listing_those_it_does(server: Server) -> None:
    server.answer("/status", STATUS)
    error = _not_hosted(server.host)
    assert error.kind == "not_hosted"
    assert error.hint == (
        "it hosts /tmp/x/tiny (running), org/big (running), org/deploying-model (deploying), "
        f"org/downloaded (cold); use one of those as --model (`cdsl models --host {server.host}` lists them)"
    )


def test_without_a_readable_status_the_not_hosted_hint_stays_the_general_one() -> None:
    error = _not_hosted(f"http://127.0.0.1:{_free_port()}")
    assert error.kind == "not_hosted" and error.hint is not None and "nnsight.status()" in error.hint
