"""Remote execution without a server: the runtime stays within NDIF's allowed imports, and a real
request for a compiled spec, serialized by nnsight, runs in a separate Python process that cannot
import constraintdsl and gives the same ids and telemetry as the local run."""

from __future__ import annotations

import ast
import http.server
import io
import json
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import torch
from nnsight.intervention.serialization import dumps
from nnsight.schema.request import RequestModel
from nnsight.tracing.backend import Backend
from nnsight.tracing.tracer import save
from nnsight.tracing.util import push

import constraintdsl.runtime.interventions as runtime_module
from constraintdsl.models import ndif as remote
from constraintdsl.run import runner
from tests.test_compiler import compile_
from tests.tiny import tiny_hf, tiny_nnsight, tiny_tokenizer

CHILD = Path(__file__).with_name("isolated_child.py")
SPEC = (
    "clamp a >= 0.5 at layer 0\n"
    "ablate b at layer 1\n"
    "steer a by 1.5 at layer 2\n"
    "clamp a in [0, 1] at layers 1-2 on last 2 when b > 0.5 at layer 0\n"
)
PROMPTS = ["Hello there friend, how are you today?", "Hi", "The cat sat on the mat."]


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_runtime_imports_only_what_ndif_allows() -> None:
    tree = ast.parse(Path(runtime_module.__file__ or "").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(_top(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the runtime must not import from this package"
            imported.add(_top(node.module or ""))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("__import__", "exec", "eval"), f"dynamic import or exec: {node.func.id}"
    assert imported, "no imports found: the check is looking at the wrong file"
    assert imported <= remote.ALLOWED_IMPORTS, f"not allowed on NDIF: {sorted(imported - remote.ALLOWED_IMPORTS)}"


def test_the_runtime_pickled_by_value_needs_only_the_standard_library_torch_and_nnsight() -> None:
    remote.register_runtime()
    assert cloudpickle.cloudpickle._is_registered_pickle_by_value(runtime_module)
    blob = dumps(runtime_module)
    found: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found.add(_top(module))
            return super().find_class(module, name)

    rebuilt = Recorder(io.BytesIO(blob)).load()
    assert callable(rebuilt.intervene) and rebuilt is not runtime_module
    third_party = {m for m in found if m not in sys.stdlib_module_names and m != "builtins"}
    # nnsight and cloudpickle rebuild the functions from source; both are on every NDIF server
    assert third_party <= remote.ALLOWED_IMPORTS | {"nnsight", "cloudpickle"}, sorted(found)
    assert "constraintdsl" not in found


class IsolatedBackend(Backend):  # type: ignore[misc]
    """Serializes the trace as nnsight's remote backend does and runs it in ``isolated_child.py``;
    the saved values come back into the caller's frame as a remote result would."""

    def __init__(self, model_dir: Path, work: Path) -> None:
        self.model_dir = model_dir
        self.work = work
        self.request_bytes = 0

    def __call__(self, tracer: Any) -> dict[str, Any]:
        blob = RequestModel.serialize(tracer, compress=False)
        self.request_bytes = len(blob)
        blob_path, out_path = self.work / "request.bin", self.work / "result.pt"
        blob_path.write_bytes(blob)
        site = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
        proc = subprocess.run(
            [
                sys.executable,
                "-I",
                "-S",
                str(CHILD),
                json.dumps(site),
                str(blob_path),
                str(self.model_dir),
                str(out_path),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=self.work,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        out = torch.load(out_path, weights_only=False)
        assert out["leaked"] == [], f"constraintdsl modules imported in the child: {out['leaked']}"
        result: dict[str, Any] = out["saved"]
        for value in result.values():
            save(value)
        push(tracer.info.frame, result)
        return result


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_hf("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_the_isolated_process_cannot_import_constraintdsl(tmp_path: Path) -> None:
    site = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    code = "import json, sys; sys.path.extend(json.loads(sys.argv[1])); import nnsight; import constraintdsl.runtime"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, json.dumps(site)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode != 0
    assert "No module named 'constraintdsl" in proc.stderr, proc.stderr[-2000:]
    # and the same interpreter without the isolation does find it: the check above is not vacuous
    assert subprocess.run([sys.executable, "-c", "import constraintdsl.runtime"], cwd=tmp_path).returncode == 0


def test_a_serialized_generate_request_runs_without_the_package_and_matches_the_local_run(
    saved_model: Path, tmp_path: Path
) -> None:
    model = tiny_nnsight("llama")
    plan = compile_(model, SPEC)
    keywords = {e.keyword for e in plan.entries}
    assert {"clamp", "ablate", "steer"} <= keywords and any(s.get("gate_reads") for s in plan.payload["sites"])
    local = runner.generate_variants(model, [None, plan.payload], PROMPTS, max_new_tokens=8)
    backend = IsolatedBackend(saved_model, tmp_path)
    far = runner.generate_variants(model, [None, plan.payload], PROMPTS, max_new_tokens=8, backend=backend)
    assert backend.request_bytes > 0
    for near_result, far_result in zip(local, far, strict=True):
        assert torch.equal(near_result.ids, far_result.ids)
        assert near_result.texts == far_result.texts
    assert local[1].telemetry is not None and far[1].telemetry is not None
    assert local[1].telemetry[:, 1].sum() > 0, "no statement bound: the comparison would prove little"
    torch.testing.assert_close(
        far[1].telemetry, local[1].telemetry, rtol=1e-6, atol=1e-5
    )  # sums of ~100: float32 noise
    assert far[0].telemetry is None
    # the constrained run differs from the baseline somewhere, so the payload really ran in the child
    assert not torch.equal(far[0].ids, far[1].ids)


def test_a_serialized_trace_request_matches_the_local_logits(saved_model: Path, tmp_path: Path) -> None:
    model = tiny_nnsight("llama")
    plan = compile_(model, SPEC)
    local = runner.trace(model, plan.payload, PROMPTS)
    (far,) = runner.trace_variants(model, [plan.payload], PROMPTS, backend=IsolatedBackend(saved_model, tmp_path))
    real = local.attention_mask.bool()  # padding columns hold no prediction (and differ across attention kernels)
    torch.testing.assert_close(far.logits[real], local.logits[real], rtol=0, atol=1e-5)
    assert far.telemetry is not None and local.telemetry is not None
    torch.testing.assert_close(far.telemetry, local.telemetry, rtol=1e-6, atol=1e-5)  # sums: float32 noise


# -- remote failures that need no NDIF: loopback stand-ins for a dead, a silent and a refusing server --


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def named_tiny(saved_model: Path) -> Any:
    """The tiny model loaded from a folder, so nnsight can name it for a server."""
    from constraintdsl.models.loading import load_model

    return load_model(str(saved_model))


def test_a_refused_connection_is_its_own_clear_error(named_tiny: Any) -> None:
    host = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(remote.RemoteFailure) as caught:
        runner.generate(named_tiny, None, "Hi", max_new_tokens=2, remote=host)
    assert caught.value.kind == "refused"
    assert str(caught.value).startswith(f"{host}: error: could not connect to NDIF at {host}: connection refused")


def test_a_server_that_never_answers_times_out_with_a_clear_error(named_tiny: Any) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        host = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.perf_counter()
        with pytest.raises(remote.RemoteFailure) as caught:
            runner.generate(named_tiny, None, "Hi", max_new_tokens=2, remote=host, timeout=1.0)
    assert caught.value.kind == "timeout"
    assert "timed out" in str(caught.value) and time.perf_counter() - started < 10


class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"detail": "Invalid API key."}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_bad_api_key_is_its_own_clear_error(named_tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NDIF_API_KEY", "not-a-key")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(remote.RemoteFailure) as caught:
            runner.generate(named_tiny, None, "Hi", max_new_tokens=2, remote=host, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.kind == "auth"
    assert "refused the API key (HTTP 403)" in str(caught.value) and "NDIF_API_KEY" in str(caught.value)


def test_a_model_built_in_memory_cannot_go_remote_and_says_why() -> None:
    with pytest.raises(remote.RemoteFailure) as caught:
        runner.generate(tiny_nnsight("llama"), None, "Hi", max_new_tokens=2, remote="http://127.0.0.1:9")
    assert caught.value.kind == "model" and "cannot run remotely" in str(caught.value)


def test_the_host_comes_from_the_argument_then_ndif_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:8001/")
    assert remote.resolve_host(True) == "http://127.0.0.1:8001"
    assert remote.resolve_host("https://example.org") == "https://example.org"
    with pytest.raises(remote.UserError, match="not a server URL"):
        remote.resolve_host("127.0.0.1:8001")
    monkeypatch.setenv("NDIF_API_KEY", "k-123")
    assert remote.api_key() == "k-123"
