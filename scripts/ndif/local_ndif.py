#!/usr/bin/env python3
"""Run the real NDIF server software (PyPI ``ndif`` 0.1.2) on 127.0.0.1, for constraintdsl's remote tests.

Usage (from the repository root, with the project's virtualenv)::

    .venv/bin/python scripts/ndif/local_ndif.py test [--big] [PYTEST ARGS]  # up, run tests/remote, down (always)
    .venv/bin/python scripts/ndif/local_ndif.py up [--big]                  # start and deploy; prints the host
    .venv/bin/python scripts/ndif/local_ndif.py down STATE_DIR              # stop what `up` started
    .venv/bin/python scripts/ndif/local_ndif.py setup                       # (re)create the server virtualenv only

What runs, every process bound to 127.0.0.1 on ports picked free at start, every PID recorded in
``STATE_DIR/pids.json`` and stopped by PID (its process group) on the way out, also when tests fail:

- Redis (Debian ``redis-server``: ``apt-get install -y redis-server``), no persistence;
- ``moto_server`` as the S3 object store (results of non-blocking jobs);
- a Ray head (``ray start --head --block``) advertising one fake GPU, as ndif's scheduler requires;
- ndif's controller (``python -m ndif.services.ray.deployments.controller.controller``);
- ndif's API under gunicorn;
- model actors from ``cpu_actor.py`` (ndif's ``BaseModelDeployment`` with the weights on the CPU);
- two spare API fronts for the stopped-server tests: ndif's app under gunicorn on their own ports, on the
  same Redis but without a queue dispatcher of their own (the stack's one dispatcher runs what they
  accept).  Each test stops one while a run waits on it; the ``test`` command passes them to pytest as
  ``--ndif-victim-host URL --ndif-victim-pid PID``.

The server runs in its OWN virtualenv (``$NDIF_VENV``, default ``$HOME/.cache/constraintdsl/ndif-venv``),
built on first use from PyPI: torch, nnsight and transformers at the client's versions, ``ndif==0.1.2``
installed with ``--no-deps --ignore-requires-python`` (it declares Python >= 3.12 but runs on 3.11), then
its dependencies.  That virtualenv does not contain constraintdsl, and the server processes get only
this folder on ``PYTHONPATH`` — the runtime reaches them by value, as on the public NDIF.

Two models are deployed: a tiny random Llama saved to ``STATE_DIR/tiny`` (from tests/tiny.py) and the
embedded SmolLM2 (its converted safetensors folder from constraintdsl.models).  Client and server share
the disk, so a folder path is the model id.  The tests find the server through ``CDSL_NDIF_HOST`` /
``--ndif-host`` and the two folders through ``CDSL_NDIF_TINY`` and ``CDSL_NDIF_SMOLLM2``.

With ``--big`` (``make test-ndif`` gives it) a third model is deployed: the scale model, SmolLM2's
architecture and tokenizer at 1,134,630,912 parameters (8.4x SmolLM2-135M; hidden 2048, 17 layers,
intermediate 8192, 32 heads, 8 KV heads, tied embeddings), random float32 weights (4.54 GB), written once
tensor by tensor into ``<constraintdsl cache>/models/ndif-scale-<key>`` (about a minute, under 1 GB of
memory) and reused while its key (shape, seed, tokenizer files) is unchanged.  The fake GPU then advertises
16 GB instead of 8 (see :func:`capacity`), ``CDSL_NDIF_BIG`` names the folder, and
tests/remote/test_scale_remote.py runs; without ``--big`` that file is left out.

This script installs nothing system-wide: ``.ci/run`` installs Debian's ``redis-server`` when it is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOOPBACK = "127.0.0.1"

# The server's packages.  torch first and pinned (the CPU build); the client's nnsight and transformers.
SERVER_TORCH = os.environ.get("NDIF_TORCH", "torch==2.13.0")
SERVER_CLIENT_PACKAGES = ["nnsight==0.8.1", "transformers==5.22.*", "accelerate"]
SERVER_NDIF = "ndif==0.1.2"
SERVER_DEPS = [
    "ray[default]",
    "fastapi",
    "gunicorn",
    "uvicorn[standard]",
    "python-multipart",
    "redis",
    "boto3",
    "click",
    "python-dotenv",
    "zstandard",
    "peft",
    "moto[server]",
]

READY_TIMEOUT = float(os.environ.get("NDIF_READY_TIMEOUT", "240"))
STOP_TIMEOUT = 45.0
VICTIMS = 2  # spare API fronts: tests/remote/test_server_stopped.py stops one with SIGTERM, one with SIGKILL
APP = "ndif.services.api.app:app"
SCALE_TESTS = "tests/remote/test_scale_remote.py"  # need the scale model: run only with --big
BIG_HELP = "also deploy the scale model (1.13B parameters, float32; built once into the cache, ~4.5 GB)"


def log(message: str) -> None:
    """One progress line on stderr."""
    print(f"[ndif-local] {message}", file=sys.stderr, flush=True)


# -- the server virtualenv ------------------------------------------------------------------------


def venv_dir() -> Path:
    """Where the server's virtualenv lives."""
    return Path(os.environ.get("NDIF_VENV") or Path.home() / ".cache" / "constraintdsl" / "ndif-venv").expanduser()


def setup_venv() -> Path:
    """Create the server virtualenv if it is missing or incomplete; returns its ``bin`` folder."""
    venv = venv_dir()
    bin_dir = venv / "bin"
    stamp = venv / ".cdsl-ndif-ready"
    if stamp.exists():
        return bin_dir
    log(f"building the server virtualenv in {venv} (a few minutes, once)")
    if not (bin_dir / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, SERVER_TORCH], check=True)
    subprocess.run([*pip, *SERVER_CLIENT_PACKAGES, SERVER_TORCH], check=True)
    subprocess.run([*pip, "--no-deps", "--ignore-requires-python", SERVER_NDIF], check=True)
    subprocess.run([*pip, *SERVER_DEPS, SERVER_TORCH], check=True)
    probe = subprocess.run(
        [str(bin_dir / "python"), "-c", "import constraintdsl"], capture_output=True, cwd=tempfile.gettempdir()
    )
    if probe.returncode == 0:
        raise SystemExit(f"{venv} can import constraintdsl; the server environment must not have it")
    stamp.write_text("ok\n")
    return bin_dir


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, what: str, pid: int | None = None) -> None:
    """Wait (bounded) until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            raise RuntimeError(f"{what} (pid {pid}) exited before listening on {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not listen on {LOOPBACK}:{port} within {timeout:.0f} s")


def alive(pid: int) -> bool:
    """Whether the process ``pid`` still runs (and is not a zombie of ours)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Stack:
    """The processes of one local NDIF, recorded in ``state/pids.json`` as they start."""

    def __init__(self, state: Path, bin_dir: Path) -> None:
        self.state = state
        self.bin_dir = bin_dir
        self.logs = state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids: dict[str, int] = {}
        self.info: dict[str, Any] = {}

    def save(self) -> None:
        """Write the PIDs and ports so ``down`` (or a later run) can stop exactly these processes."""
        (self.state / "pids.json").write_text(json.dumps({"pids": self.pids, **self.info}, indent=2))

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Start ``argv`` in its own session (so its PID is also its process group), log to a file."""
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115  (kept open by the child)
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        out.close()
        self.pids[name] = proc.pid
        self.save()
        log(f"started {name} (pid {proc.pid})")
        return proc.pid


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` still runs (its leader, a child of ours, is reaped
    first: a zombie still counts as a member)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_all(state: Path) -> None:
    """Stop every process recorded in ``state/pids.json``, newest first: SIGTERM to its process group,
    then SIGKILL after a bounded wait.  Only PIDs this launcher recorded are touched.  SIGINT and SIGTERM
    are ignored meanwhile, so a second signal cannot cut the clean-up short (it is bounded)."""
    record = state / "pids.json"
    if not record.exists():
        return
    pids: dict[str, int] = json.loads(record.read_text()).get("pids", {})
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for name, pid in reversed(list(pids.items())):
            _stop(name, pid)
        record.rename(state / "pids.stopped.json")
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _stop(name: str, pid: int) -> None:
    if not alive(pid) and not group_alive(pid):  # a leader gone may leave members behind
        return
    log(f"stopping {name} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        if name == "ray":
            os.kill(pid, signal.SIGTERM)  # the leader alone: `ray start --block` then stops its own children
        else:
            os.killpg(pid, signal.SIGTERM)  # all at once: gunicorn's master would wait for its dispatcher
    deadline = time.monotonic() + (STOP_TIMEOUT if name == "ray" else 15.0)
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.3)
    for sig in (signal.SIGTERM, signal.SIGKILL):  # whatever of its process group is left
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        time.sleep(1.0)
    gone = time.monotonic() + 10
    while group_alive(pid) and time.monotonic() < gone:  # until the group is empty (bounded)
        time.sleep(0.2)


def server_env(bin_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of every server process: the server venv first on PATH, nothing of this repo
    on PYTHONPATH but ``scripts/ndif`` (for ``cpu_actor``), loopback URLs, offline hub."""
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TERM")}
    return {
        **keep,
        "PATH": f"{bin_dir}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
        "VIRTUAL_ENV": str(bin_dir.parent),
        "PYTHONPATH": str(HERE),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray swaps 127.0.0.1 for the machine's external address unless it runs in single-node mode
        # (its macOS/Windows default); this keeps every Ray address on loopback
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # nothing to drain when the tests are done: stop at once instead of waiting 30 s on SIGTERM
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "GRPC_ENABLE_FORK_SUPPORT": "0",
        "OMP_NUM_THREADS": os.environ.get("NDIF_THREADS", "2"),
        **extra,
    }


def capacity(big: bool) -> dict[str, float]:
    """What the Ray head advertises: the fake GPU's memory, the CPU cache budget and logical CPUs.

    ndif places a replica of ``size_bytes`` on a GPU with ``size × (1 + 0.15) + 500 MiB`` free (its default
    padding).  tiny + SmolLM2 take about 1.7 GB of the default 8 GB; the scale model adds about 5.7 GB (7.4 GB
    in all, too close), so with it the GPU and the cache advertise 16 GB.  One logical CPU per model actor and
    one for the controller, plus one spare."""
    return {"memory": 16e9 if big else 8e9, "cpus": 5 if big else 4}


def padded(size_bytes: int) -> int:
    """The room ndif 0.1.2 reserves for a replica (its default padding factor and bias)."""
    return math.ceil(size_bytes * 1.15 + 500 * 1024 * 1024)


def start_stack(stack: Stack, big: bool = False) -> str:
    """Start Redis, moto, Ray, the controller and the API; returns the API's URL.  ``big``: room for the
    scale model (:func:`capacity`)."""
    bin_dir = stack.bin_dir
    ports = {name: free_port() for name in ("redis", "s3", "gcs", "client", "api")}
    ray_ports = {
        "node-manager-port": free_port(),
        "object-manager-port": free_port(),
        "metrics-export-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "dashboard-agent-listen-port": free_port(),
        "runtime-env-agent-port": free_port(),
    }
    worker_base = 20000 + (os.getpid() % 200) * 50
    home = stack.state / "home"
    home.mkdir(exist_ok=True)
    env = server_env(
        bin_dir,
        {
            "NDIF_HOME": str(home),
            "NDIF_REDIS_URL": f"redis://{LOOPBACK}:{ports['redis']}",
            "NDIF_OBJECT_STORE_URL": f"http://{LOOPBACK}:{ports['s3']}",
            "NDIF_OBJECT_STORE_ACCESS_KEY": "local",
            "NDIF_OBJECT_STORE_SECRET_KEY": "local-secret",
            "NDIF_OBJECT_STORE_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local-secret",
            "NDIF_RAY_ADDRESS": f"ray://{LOOPBACK}:{ports['client']}",
            "NDIF_DEFAULT_DTYPE": "float32",
            "NDIF_MODEL_IMPORT_PATH": "cpu_actor.CPUModelActor",
            "NDIF_MINIMUM_DEPLOYMENT_TIME_SECONDS": "0",
            "NDIF_API_PORT": str(ports["api"]),
            "NDIF_API_URL": f"http://{LOOPBACK}:{ports['api']}",
            "NDIF_LOG_LEVEL": "INFO",
        },
    )
    stack.info.update({"ports": ports, "env": {k: v for k, v in env.items() if k.startswith("NDIF_")}})
    (stack.state / "server.env").write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))

    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server is missing: apt-get install -y redis-server")
    pid = stack.start(
        "redis",
        [
            redis,
            "--bind",
            LOOPBACK,
            "--port",
            str(ports["redis"]),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(home),
            "--protected-mode",
            "yes",
        ],
        env,
    )
    wait_port(ports["redis"], 20, "redis", pid)
    pid = stack.start("moto", [str(bin_dir / "moto_server"), "-H", LOOPBACK, "-p", str(ports["s3"])], env)
    wait_port(ports["s3"], 30, "moto_server", pid)

    room = capacity(big)
    stack.info["capacity"] = room
    resources = json.dumps({"head": 10, "cuda_memory_bytes": room["memory"], "cpu_memory_bytes": room["memory"]})
    ray_argv = [
        str(bin_dir / "ray"), "start", "--head", "--block",
        f"--node-ip-address={LOOPBACK}", f"--port={ports['gcs']}",
        f"--ray-client-server-port={ports['client']}",
        f"--num-cpus={room['cpus']:g}", "--num-gpus=1", f"--resources={resources}",
        # ndif's controller lists nodes through Ray's state API, which the dashboard serves
        "--include-dashboard=true", f"--dashboard-host={LOOPBACK}", f"--dashboard-port={free_port()}",
        "--disable-usage-stats",
        f"--min-worker-port={worker_base}", f"--max-worker-port={worker_base + 49}",
        f"--temp-dir={stack.state / 'ray'}",
        *[f"--{k}={v}" for k, v in ray_ports.items()],
    ]  # fmt: skip
    pid = stack.start("ray", ray_argv, env)
    wait_port(ports["gcs"], 90, "ray (GCS)", pid)
    wait_port(ports["client"], 90, "ray (client server)", pid)

    controller_env = {**env, "RAY_ADDRESS": f"{LOOPBACK}:{ports['gcs']}"}
    pid = stack.start(
        "controller", [str(bin_dir / "python"), "-m", "ndif.services.ray.deployments.controller.controller"],
        controller_env,
    )  # fmt: skip
    # the controller script creates a detached, named actor (and may exit); wait until Ray knows it (bounded)
    deadline = time.monotonic() + 120
    while not _controller_up(bin_dir, env):
        if time.monotonic() > deadline:
            raise RuntimeError(f"ndif's controller did not come up within 120 s; see {stack.logs / 'controller.log'}")
        time.sleep(2)

    # ndif's gunicorn config starts the one queue dispatcher beside the API
    pid = stack.start("api", api_argv(bin_dir, ports["api"], "--config", "python:ndif.services.api.gunicorn_conf"), env)
    wait_port(ports["api"], 60, "api", pid)
    host = f"http://{LOOPBACK}:{ports['api']}"
    stack.info["host"] = host
    stack.save()
    return host


def api_argv(bin_dir: Path, port: int, *config: str) -> list[str]:
    """gunicorn serving ndif's API app on 127.0.0.1:port, one worker.  No control socket: gunicorn would
    otherwise create one under ``$HOME/.gunicorn``, shared by every instance."""
    return [
        str(bin_dir / "gunicorn"), *config, "--bind", f"{LOOPBACK}:{port}", "--workers", "1",
        "--graceful-timeout", "5", "--no-control-socket", APP,
    ]  # fmt: skip


def start_victims(stack: Stack, count: int) -> list[tuple[int, int]]:
    """Start ``count`` spare API fronts for the stopped-server tests; returns ``(pid, port)`` of each.

    ndif's app under gunicorn with uvicorn's worker, as in ndif's own config but without its
    ``on_starting`` hook: that hook starts a queue dispatcher, and a second dispatcher on the same Redis
    would compete with the stack's for every request.  Requests they accept go through the shared Redis
    queue to the stack's dispatcher and model actors; their results come back through Redis to the
    front that holds the client's websocket."""
    env = server_env(stack.bin_dir, stack.info["env"])
    started = []
    for index in range(1, count + 1):
        port = free_port()
        pid = stack.start(f"victim-{index}", api_argv(stack.bin_dir, port, "-k", "uvicorn.workers.UvicornWorker"), env)
        started.append((pid, port))
    return started


def _controller_up(bin_dir: Path, env: dict[str, str]) -> bool:
    probe = (
        "import ray; ray.init(address=__import__('os').environ['NDIF_RAY_ADDRESS'], logging_level='ERROR');"
        "from ndif.common.providers.ray import get_controller_actor_handle as h; h(); print('ok')"
    )
    try:
        done = subprocess.run(
            [str(bin_dir / "python"), "-c", probe], env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and "ok" in done.stdout


# -- models ----------------------------------------------------------------------------------------

# The scale model (``--big``): SmolLM2's architecture and tokenizer at 8x its parameter count and more, with
# random weights.  1,134,630,912 parameters (SmolLM2-135M: 134,515,008), float32: 4.54 GB of weights.
BIG_SHAPE = {
    "hidden_size": 2048,
    "num_hidden_layers": 17,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
}
BIG_SEED = 0
BIG_STD = 0.02  # every matrix ~ N(0, 0.02); the RMSNorm weights are ones
BIG_SHARD_BYTES = 1 << 30
BIG_FORMAT = 1  # bump when the way the folder is written changes: the cache key changes with it
BIG_MARKER = "cdsl-scale-model.json"  # written last: a folder without it is never used
BIG_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
BIG_COPIED = (*BIG_TOKENIZER_FILES, "generation_config.json")


def big_config(smollm2: Path) -> dict[str, Any]:
    """SmolLM2's ``config.json`` with the scale model's shape (vocabulary, RoPE, norms, tied embeddings kept)."""
    config: dict[str, Any] = json.loads((smollm2 / "config.json").read_text())
    config.pop("_model_name_or_path", None)
    config.update(BIG_SHAPE)
    config["dtype"] = "float32"
    return config


def big_tensors(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Every stored tensor's name and shape, in the model's order, from the architecture built on the meta
    device (nothing allocated); a tied ``lm_head.weight`` is not stored, as ``save_pretrained`` does."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)  # type: ignore[no-untyped-call]
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) if config.get("tie_word_embeddings") else set()
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items() if name not in tied]


def _big_tensor(name: str, shape: tuple[int, ...]) -> Any:
    """One tensor's values: seeded by its name (the same bytes whatever the order), float32."""
    import torch

    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.float32)
    generator = torch.Generator().manual_seed(BIG_SEED * 1_000_003 + zlib.crc32(name.encode()))
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, BIG_STD, generator=generator)


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]]) -> None:
    """A safetensors file written tensor by tensor (the header first, from the shapes), so at most one
    tensor is in memory at a time."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        size = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for name, shape in tensors:
            out.write(_big_tensor(name, shape).numpy())  # little-endian float32, no copy
            # (byte order: safetensors is little-endian, as every machine this runs on)


def _shards(tensors: list[tuple[str, tuple[int, ...]]]) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * 4
        if shards[-1] and size + nbytes > BIG_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_big(smollm2: Path, cache: Path) -> Path:
    """The scale model's folder under ``cache/models``, built once and reused.

    Keyed by what makes its bytes (shape, seed, init, format, the tokenizer files): a run with the same key
    reuses the folder.  Built into a temporary folder beside it (named with the builder's PID) and renamed in
    one step after the marker file is written, so a build that fails or is killed is never reused; its
    leftovers are removed by the next build once that PID is gone."""
    config = big_config(smollm2)
    copied = [name for name in BIG_COPIED if (smollm2 / name).is_file()]
    key_source = {
        "config": config,
        "seed": BIG_SEED,
        "std": BIG_STD,
        "format": BIG_FORMAT,
        "shard_bytes": BIG_SHARD_BYTES,
        "files": {name: _digest(smollm2 / name) for name in copied},
    }
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:12]
    target = cache / "models" / f"ndif-scale-{key}"
    if (target / BIG_MARKER).is_file():
        log(f"scale model: reusing {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{target.name}.tmp-*"):
        owner = stale.name.split(".tmp-", 1)[1].split("-", 1)[0]
        if not owner.isdigit() or not alive(int(owner)):
            log(f"scale model: removing an unfinished build {stale}")
            shutil.rmtree(stale, ignore_errors=True)
    if target.exists():  # only a folder with the marker is complete (the rename is atomic): never here
        shutil.rmtree(target, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache should look like any other folder
    started = time.monotonic()
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in copied:
            shutil.copyfile(smollm2 / name, tmp / name)
        tensors = big_tensors(config)
        params = sum(math.prod(shape) for _, shape in tensors)
        log(f"scale model: writing {params:,} parameters ({params * 4 / 1e9:.2f} GB float32) to {tmp}")
        shards = _shards(tensors)
        weight_map: dict[str, str] = {}
        for index, shard in enumerate(shards, start=1):
            name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(tmp / name, shard)
            weight_map.update({tensor: name for tensor, _ in shard})
        index_file = {"metadata": {"total_size": params * 4, "total_parameters": params}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2) + "\n")
        marker = {"params": params, "weights_bytes": params * 4, "shape": BIG_SHAPE, **key_source}
        marker.pop("config")
        (tmp / BIG_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / BIG_MARKER).is_file():  # another build finished first: keep that one
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"scale model: built {target} in {time.monotonic() - started:.1f} s")
    return target


def prepare_models(state: Path, with_smollm2: bool, with_big: bool = False) -> dict[str, dict[str, Any]]:
    """Save the tiny model, find SmolLM2's folder, build (or reuse) the scale model, and compute each model
    key exactly as the client will (this runs in the project's virtualenv).  Returns ``{name: {folder,
    model_key, size_bytes}}``; the scale model's entry also has ``params`` and ``weights_bytes``."""
    sys.path.insert(0, str(REPO))
    import nnsight.modeling.huggingface as hf
    from nnsight import TransformersModel

    from tests.tiny import tiny_hf, tiny_tokenizer

    models: dict[str, dict[str, Any]] = {}
    tiny = state / "tiny"
    if not (tiny / "config.json").exists():
        tiny_hf("llama").save_pretrained(tiny)
        tiny_tokenizer().save_pretrained(tiny)
    folders = {"tiny": tiny}
    if with_smollm2 or with_big:
        from constraintdsl.models.loading import _embedded_folder, cache_dir

        smollm2 = _embedded_folder()[0]
        if with_smollm2:
            folders["smollm2"] = smollm2
        if with_big:
            folders["big"] = build_big(smollm2, cache_dir())
    for name, folder in folders.items():
        path = str(Path(folder).resolve())
        hf._ID_CACHE[path] = path
        key = TransformersModel(path, task="text-generation").to_model_key()
        size = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
        models[name] = {"folder": path, "model_key": key, "size_bytes": int(size)}
        marker = Path(path) / BIG_MARKER
        if marker.is_file():
            made = json.loads(marker.read_text())
            models[name].update(params=made["params"], weights_bytes=made["weights_bytes"])
    return models


def deploy(stack: Stack, models: dict[str, dict[str, Any]]) -> None:
    """``ndif deploy -f models.yaml`` (bounded), then wait until the API reports every model RUNNING."""
    lines = ["models:"]
    for spec in models.values():
        lines += [
            f"  - checkpoint: {json.dumps(spec['folder'])}",
            "    task: text-generation",
            "    dtype: float32",
            f"    size_bytes: {spec['size_bytes']}",
            f"    model_key: {json.dumps(spec['model_key'])}",
            "    pinned: true",
            "    actor_class: cpu_actor.CPUModelActor",
        ]
    room = stack.info.get("capacity", capacity(False))["memory"]
    need = sum(padded(spec["size_bytes"]) for spec in models.values())
    if need > room:
        raise RuntimeError(f"the models need {need / 1e9:.2f} GB of the fake GPU's {room / 1e9:.2f} GB; see capacity()")
    config = stack.state / "models.yaml"
    config.write_text("\n".join(lines) + "\n")
    env = {**server_env(stack.bin_dir, {}), **stack.info["env"]}
    log(f"deploying {', '.join(models)}")
    with open(stack.logs / "deploy.log", "ab") as out:
        done = subprocess.run(
            [str(stack.bin_dir / "ndif"), "deploy", "-f", str(config)],
            env=env, stdout=out, stderr=subprocess.STDOUT, timeout=READY_TIMEOUT, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"ndif deploy failed (exit {done.returncode}); see {stack.logs / 'deploy.log'}")
    host = stack.info["host"]
    deadline = time.monotonic() + READY_TIMEOUT
    want = {spec["model_key"] for spec in models.values()}
    while time.monotonic() < deadline:
        running: set[str] = set()
        try:
            with urllib.request.urlopen(f"{host}/status", timeout=10) as response:
                status = json.loads(response.read())
            for name, value in status.get("deployments", {}).items():  # "REPLICA:ModelActor:MODEL_KEY"
                if value.get("application_state") == "RUNNING":
                    running.update(key for key in want if name.endswith(key))
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if want <= running:
            log("every model is RUNNING")
            return
        time.sleep(2)
    raise RuntimeError(f"models not RUNNING within {READY_TIMEOUT:.0f} s; see {stack.logs}")


def up(state: Path, with_smollm2: bool = True, with_big: bool = False) -> dict[str, Any]:
    """Start a local NDIF with the models deployed (``with_big``: the scale model too); on any failure stop
    what was started and re-raise."""
    bin_dir = setup_venv()
    stack = Stack(state, bin_dir)
    try:
        started = time.monotonic()
        host = start_stack(stack, with_big)
        victims = start_victims(stack, VICTIMS)  # they boot while the models deploy
        models = prepare_models(state, with_smollm2, with_big)
        stack.info["models"] = models
        stack.save()
        deploy(stack, models)
        for pid, port in victims:
            wait_port(port, 60, "spare api", pid)
        stack.info["victims"] = [{"host": f"http://{LOOPBACK}:{port}", "pid": pid} for pid, port in victims]
        stack.info["startup_seconds"] = round(time.monotonic() - started, 1)
        stack.save()
        log(f"NDIF is up at {host} in {stack.info['startup_seconds']} s (state: {state})")
        return stack.info
    except BaseException:
        log(f"start failed; logs in {stack.logs}")
        stop_all(state)
        raise


def run_tests(pytest_args: list[str], with_smollm2: bool, with_big: bool = False) -> int:
    """Up, ``pytest tests/remote`` against it, down — down also when anything fails.  Without ``with_big`` the
    scale tests (tests/remote/test_scale_remote.py, which need the scale model) are left out.

    A skipped test fails the run (``--ndif-no-skips``): against a server that is up, every remote test must
    run, so a wrong model variable cannot turn the suite into skips that pass.  No test run (pytest's exit
    5) fails too."""
    state = Path(tempfile.mkdtemp(prefix="cdsl-ndif-"))
    started = time.monotonic()
    code = 1
    try:
        info = up(state, with_smollm2, with_big)
        env = {**os.environ, "CDSL_NDIF_HOST": info["host"], "CDSL_NDIF_TINY": info["models"]["tiny"]["folder"]}
        if "smollm2" in info["models"]:
            env["CDSL_NDIF_SMOLLM2"] = info["models"]["smollm2"]["folder"]
        scale = []
        if "big" in info["models"]:
            env["CDSL_NDIF_BIG"] = info["models"]["big"]["folder"]
        else:
            scale = [f"--ignore={SCALE_TESTS}"]
        env["HF_HUB_OFFLINE"] = "1"
        victims = [
            arg
            for v in info["victims"]
            for arg in ("--ndif-victim-host", v["host"], "--ndif-victim-pid", str(v["pid"]))
        ]
        tests_started = time.monotonic()
        code = subprocess.run(
            [
                sys.executable, "-m", "pytest", "tests/remote", "--ndif-host", info["host"], "--ndif-no-skips",
                *victims, *scale, *pytest_args,
            ],
            env=env, cwd=REPO, check=False,
        ).returncode  # fmt: skip
        log(f"tests took {time.monotonic() - tests_started:.1f} s (exit {code})")
    finally:
        stop_all(state)
        if code == 0:
            shutil.rmtree(state, ignore_errors=True)
            log(f"total {time.monotonic() - started:.1f} s")
        else:
            log(f"total {time.monotonic() - started:.1f} s; logs kept in {state / 'logs'}")
    return code


def _terminate(signum: int, frame: object) -> None:
    # once: make forwards the SIGTERM `timeout` sends its whole group, and a second one would interrupt the clean-up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Command line: setup | up | down STATE | test [PYTEST ARGS]."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="create the server virtualenv")
    p_up = sub.add_parser("up", help="start a local NDIF and deploy the models; prints JSON with the host")
    p_up.add_argument("--no-smollm2", action="store_true", help="deploy only the tiny model")
    p_up.add_argument("--big", action="store_true", help=BIG_HELP)
    p_down = sub.add_parser("down", help="stop the processes recorded in STATE/pids.json")
    p_down.add_argument("state", type=Path)
    p_test = sub.add_parser("test", help="up, run tests/remote, down")
    p_test.add_argument("--no-smollm2", action="store_true", help="deploy only the tiny model")
    p_test.add_argument("--big", action="store_true", help=BIG_HELP)
    args, rest = parser.parse_known_args(argv)
    # a SIGTERM (make interrupted, CI cancelled, `timeout`) unwinds like Ctrl-C, so the `finally` stops the server
    signal.signal(signal.SIGTERM, _terminate)
    if args.command == "setup":
        print(setup_venv())
        return 0
    if args.command == "up":
        state = Path(tempfile.mkdtemp(prefix="cdsl-ndif-"))
        info = up(state, not args.no_smollm2, args.big)
        shown = {"host": info["host"], "state": str(state), "models": info["models"], "victims": info["victims"]}
        print(json.dumps(shown, indent=2))
        return 0
    if args.command == "down":
        stop_all(args.state)
        return 0
    try:
        return run_tests(rest, not args.no_smollm2, args.big)
    except KeyboardInterrupt:
        log("interrupted; every process it started has been stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
