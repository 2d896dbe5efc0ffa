"""At scale against a real NDIF server: the client never reads the weights.

``make test-ndif`` deploys a scale model beside the others (``local_ndif.py --big``: SmolLM2's architecture
and tokenizer at 1.13B parameters, random float32 weights, 4.54 GB).  Each ``cdsl`` command below runs in a
FRESH client process (``.venv/bin/python -c SPY …``) that records every weight file it opens and reports its
peak RSS when it exits: ``concept build --host``, ``explain`` (no server needed: it reads the model without
its weights), ``run --host`` and ``compare --host``.  Each must exit 0, open no weight file of the model's
folder, and peak under a quarter of the weights' bytes; the comparison must be ONE request.

The spy: ``safetensors`` opens files in Rust, out of sight of Python's audit hooks, so its ``safe_open``,
``load_file`` and ``load`` are wrapped (in ``safetensors``, ``safetensors.torch`` and ``safetensors.numpy``)
before anything imports them, as is ``torch.load``; an audit hook adds every Python-level ``open`` of a
weight-like file (``.safetensors``, ``.bin``, ``.pt``, …).  At exit it writes one JSON line on stderr:
``{"client_spy": 1, "peak_rss_bytes": …, "opened": [{"via": …, "path": …}, …], "posted": N, …}``
(``posted``: requests POSTed to NDIF).  ``benchmarks/remote.py`` measures the client the same way
(:func:`scale_session`).

The peak RSS is the process's ``VmHWM`` (``/proc/self/status``), not ``getrusage``'s ``ru_maxrss``, which it
reports beside it (``rusage_maxrss_bytes``): Linux carries ``ru_maxrss`` over fork and exec, so a client
started by a process that holds a model reports at least that process's size (from the benchmark, which
has SmolLM2 loaded, every client read 1401 MB whatever it did).  ``VmHWM`` belongs to the memory the client's
own image mapped after exec.  (Where ``/proc`` is missing the spy falls back to ``ru_maxrss``.)

Skipped without a server or without ``CDSL_NDIF_BIG`` (see conftest.py); keep token counts small, the server
computes 1B-parameter forward passes on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.test_concepts import PLAIN

RSS_FRACTION = 0.25  # the client's peak RSS stays under this share of the weights' bytes
TIMEOUT = 1200  # seconds per client command (each is a few requests of a few tokens)

SPY = r"""
import atexit, json, os, resource, sys

_opened = []
_posted = [0]
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")


def _note(via, target):
    if isinstance(target, (bytes, bytearray, memoryview)):
        _opened.append({"via": via, "bytes": len(target)})
    elif isinstance(target, (str, bytes, os.PathLike)):
        _opened.append({"via": via, "path": os.path.abspath(os.fsdecode(target))})
    else:  # a file object: nnsight reads each response with torch.load(BytesIO)
        size = target.getbuffer().nbytes if hasattr(target, "getbuffer") else None
        name = getattr(target, "name", None)
        name = os.path.abspath(os.fsdecode(name)) if isinstance(name, (str, bytes, os.PathLike)) else None
        _opened.append({"via": via, "object": type(target).__name__, "name": name, "bytes": size})


def _audit(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.fsdecode(args[0]).endswith(_WEIGHTS):
            _note("open", args[0])


sys.addaudithook(_audit)

import safetensors, safetensors.numpy, safetensors.torch, torch


def _spy(module, name, via):
    original = getattr(module, name)

    def wrapper(target, *args, **kwargs):
        _note(via, target)
        return original(target, *args, **kwargs)

    setattr(module, name, wrapper)


_safe_open = safetensors.safe_open
for _module in (safetensors, safetensors.torch, safetensors.numpy):
    if getattr(_module, "safe_open", None) is _safe_open:
        _spy(_module, "safe_open", "safetensors.safe_open")
for _module in (safetensors.torch, safetensors.numpy):
    _spy(_module, "load_file", _module.__name__ + ".load_file")
    _spy(_module, "load", _module.__name__ + ".load")
_torch_load = torch.load
_spy(torch, "load", "torch.load")
if torch.serialization.load is _torch_load:
    torch.serialization.load = torch.load


def _high_water():
    try:
        with open("/proc/self/status") as status:
            for row in status:
                if row.startswith("VmHWM:"):
                    return int(row.split()[1]) * 1024
    except OSError:
        pass
    return None


def _report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    high_water = _high_water()
    line = {
        "client_spy": 1,
        "peak_rss_bytes": usage.ru_maxrss * 1024 if high_water is None else high_water,
        "peak_rss_source": "getrusage" if high_water is None else "VmHWM",
        "rusage_maxrss_bytes": usage.ru_maxrss * 1024,
        "children_peak_rss_bytes": children.ru_maxrss * 1024,
        "opened": _opened,
        "posted": _posted[0],
    }
    sys.stdout.flush()
    sys.stderr.write("\n" + json.dumps(line) + "\n")
    sys.stderr.flush()


atexit.register(_report)

from constraintdsl.models import ndif as _ndif

_original_post = _ndif.NdifBackend._post


def _post(backend, *args, **kwargs):
    _posted[0] += 1
    return _original_post(backend, *args, **kwargs)


_ndif.NdifBackend._post = _post

from constraintdsl.cli import main

sys.argv = ["cdsl", *sys.argv[1:]]
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class ClientRun:
    """One ``cdsl`` command in a fresh, spied client process."""

    args: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_bytes: int = 0
    opened: list[dict[str, Any]] = field(default_factory=list)
    posted: int = -1
    reported: bool = False
    rusage_maxrss_bytes: int = 0

    @property
    def command(self) -> str:
        return "cdsl " + " ".join(self.args[:2])

    def weight_reads(self, folder: Path) -> list[dict[str, Any]]:
        """What it read of the model's weights: any spied open of a file in the model's folder (the audit hook
        records only weight-like names; config and tokenizer files there are read through plain ``open``),
        or of a file object named after one.  Loads from memory (a concept artifact's bytes, nnsight's
        responses through ``torch.load(BytesIO)``) are recorded with their size but are not weight reads: to
        get weights into memory the client would have opened their file first."""
        inside = folder.resolve()
        return [o for o in self.opened if (o.get("path") or o.get("name")) and inside in _resolved(o).parents]

    def files(self) -> list[str]:
        """The files it opened through the spied calls, each once."""
        return list(
            dict.fromkeys(str(o.get("path") or o["name"]) for o in self.opened if o.get("path") or o.get("name"))
        )

    def loads(self) -> list[int]:
        """The sizes of what it loaded from memory (artifact bytes, nnsight's responses)."""
        return [int(o["bytes"]) for o in self.opened if o.get("bytes") is not None and not o.get("name")]

    def summary(self, weights_bytes: int) -> str:
        """The measured numbers, for failure messages and the log."""
        share = self.peak_rss_bytes / weights_bytes if weights_bytes else float("nan")
        return (
            f"{self.command}: exit {self.code} in {self.seconds:.1f} s; client peak RSS "
            f"{self.peak_rss_bytes / 1e6:.0f} MB = {share:.1%} of the weights' {weights_bytes / 1e9:.2f} GB "
            f"(limit {RSS_FRACTION:.0%}: {RSS_FRACTION * weights_bytes / 1e6:.0f} MB; getrusage's ru_maxrss, with the "
            f"launcher's, {self.rusage_maxrss_bytes / 1e6:.0f} MB); requests posted {self.posted}; "
            f"files opened {self.files()}; loads from memory {len(self.loads())} "
            f"(largest {max(self.loads(), default=0) / 1e6:.1f} MB)"
        )

    def failure(self, weights_bytes: int) -> str:
        """The summary with the end of the command's output."""
        return (
            f"{self.summary(weights_bytes)}\n--- stderr (end) ---\n{self.stderr[-4000:]}\n--- stdout (end) ---\n"
            + (self.stdout[-2000:])
        )


def _resolved(opened: Mapping[str, Any]) -> Path:
    return Path(str(opened.get("path") or opened.get("name"))).resolve()


def spied_cdsl(args: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float = TIMEOUT) -> ClientRun:
    """Run ``cdsl ARGS`` in a fresh interpreter of this virtualenv with the spy; parse its report."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", SPY, *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    run = ClientRun(args, done.returncode, done.stdout, done.stderr, time.perf_counter() - started)
    for line in reversed(done.stderr.splitlines()):
        if line.startswith('{"client_spy"'):
            report = json.loads(line)
            run.peak_rss_bytes = int(report["peak_rss_bytes"])
            run.opened = list(report["opened"])
            run.posted = int(report["posted"])
            run.rusage_maxrss_bytes = int(report["rusage_maxrss_bytes"])
            run.reported = True
            break
    return run


def weights_bytes(folder: Path) -> int:
    """The model's weights in bytes: the index's ``total_size`` (tensor bytes), else the safetensors files' sizes."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return int(json.loads(index.read_text())["metadata"]["total_size"])
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


CONCEPT_LAYERS = "1-2"
SPEC = """\
version 1
name "scale"
concept tone from file "tone.safetensors"

steer tone by 1.5 at layer 1 on prompt
clamp tone >= 0.5 at layer 2 on generated
"""
PROMPTS = ["Hello there, how are you?", "Write about the sea."]
CORPUS = (
    "The cat sat on the mat and looked out of the window at the rain. The capital of France is Paris, "
    "and the capital of Italy is Rome. Thank you very much, this was wonderful and kind.\n"
)


def client_env(workdir: Path) -> dict[str, str]:
    """The client's environment: its own cache (no concept reused from elsewhere), the hub offline."""
    return {
        **os.environ,
        "CONSTRAINTDSL_CACHE": str(workdir / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def scale_session(big: Path, host: str, workdir: Path) -> dict[str, ClientRun]:
    """``concept build``, ``explain``, ``run`` and ``compare`` on the scale model from fresh spied clients, in
    ``workdir``; stops after a command that fails (the later ones need its artifact).  Keyed by verb."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tone.yaml").write_text(PLAIN)
    (workdir / "scale.cdsl").write_text(SPEC)
    (workdir / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (workdir / "corpus.txt").write_text(CORPUS)
    env = client_env(workdir)
    model = ["--model", str(big)]
    remote = ["--host", host]
    wait = ["--timeout", str(TIMEOUT)]
    small = ["--max-new-tokens", "4"]
    commands = {
        "concept": [
            *("concept", "build", "--pairs", "tone.yaml", *model, "--layers", CONCEPT_LAYERS),
            *("-o", "tone.safetensors", "--no-progress", *remote, *wait),
        ],
        "explain": ["explain", "scale.cdsl", *model],
        "run": ["run", "scale.cdsl", *model, *remote, "--prompt", PROMPTS[0], *small, *wait],
        "compare": [
            *("compare", "scale.cdsl", *model, *remote, "--prompts", "prompts.txt", "--corpus", "corpus.txt"),
            *("--window", "16", "--corpus-tokens", "32", *small, "--json", "--no-store"),
        ],
    }
    runs: dict[str, ClientRun] = {}
    for verb, args in commands.items():
        runs[verb] = run = spied_cdsl(args, cwd=workdir, env=env)
        if run.code != 0:
            break
    return runs


@dataclass(frozen=True)
class Scale:
    """The scale model's folder and weight bytes, the client commands' working folder and their runs."""

    folder: Path
    weights_bytes: int
    workdir: Path
    runs: dict[str, ClientRun]


@pytest.fixture(scope="module")
def scale(big_folder: Path, ndif_host: str, tmp_path_factory: pytest.TempPathFactory) -> Scale:
    """The four client commands against the scale model, run once for this module."""
    size = weights_bytes(big_folder)
    assert size >= 4_000_000_000, f"{big_folder} holds {size / 1e9:.2f} GB of weights: not the scale model"
    workdir = tmp_path_factory.mktemp("scale")
    runs = scale_session(big_folder, ndif_host, workdir)
    for run in runs.values():
        print(run.summary(size))  # shown with -s
    return Scale(big_folder, size, workdir, runs)


def _check(scale: Scale, verb: str) -> ClientRun:
    """The command ran, exited 0, read no weights and peaked under the RSS limit."""
    if verb not in scale.runs:
        failed = next(v for v, r in scale.runs.items() if r.code != 0)
        pytest.fail(
            f"cdsl {verb} did not run: {failed} failed first\n{scale.runs[failed].failure(scale.weights_bytes)}"
        )
    run = scale.runs[verb]
    assert run.code == 0, run.failure(scale.weights_bytes)
    assert run.reported, f"the spy did not report (did the client exit through os._exit?)\n{run.failure(0)}"
    assert not run.weight_reads(scale.folder), (
        f"the client read weights: {run.weight_reads(scale.folder)}\n{run.summary(scale.weights_bytes)}"
    )
    assert run.peak_rss_bytes < RSS_FRACTION * scale.weights_bytes, run.summary(scale.weights_bytes)
    return run


def test_a_remote_concept_build_on_the_scale_model_reads_no_weights(scale: Scale) -> None:
    run = _check(scale, "concept")
    assert run.posted >= 1, run.summary(scale.weights_bytes)  # one request per batch
    from constraintdsl.concepts.artifact import load_artifact

    artifact = load_artifact(scale.workdir / "tone.safetensors")
    assert list(artifact.layers or ()) == [1, 2]
    assert artifact.directions.shape[-1] == 2048  # the scale model's hidden size


def test_explain_on_the_scale_model_reads_no_weights(scale: Scale) -> None:
    run = _check(scale, "explain")
    assert run.posted == 0, run.summary(scale.weights_bytes)
    assert "tone" in run.stdout, run.failure(scale.weights_bytes)


def test_a_remote_run_on_the_scale_model_reads_no_weights(scale: Scale) -> None:
    run = _check(scale, "run")
    assert run.posted >= 1, run.summary(scale.weights_bytes)


def test_a_remote_comparison_on_the_scale_model_is_one_request_and_reads_no_weights(scale: Scale) -> None:
    run = _check(scale, "compare")
    result = json.loads(run.stdout)
    assert result["requests"] == 1 == run.posted, (
        f"JSON requests {result['requests']}, posted {run.posted}; passes {result['forward_passes']}\n"
        + run.summary(scale.weights_bytes)
    )
    assert len(result["rows"]) == 2 and result["rows"][0]["label"] == "baseline", result["rows"]
    assert all(len(row["generations"]) == len(PROMPTS) for row in result["rows"])
