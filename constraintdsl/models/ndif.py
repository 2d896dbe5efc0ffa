"""Remote execution on NDIF: host and key, the request backend, checks before sending, clear errors.

The runner's trace blocks run unchanged on an NDIF server: nnsight serializes the block (its source and
the names it reads: the payload, the per-run state, the runtime module) and names the model by its key.
The server does not have this package, so :func:`register_runtime` makes the torch-only
:mod:`constraintdsl.runtime` travel by value.  :class:`NdifBackend` is nnsight's ``RemoteBackend`` with
what the runner needs on top: the request id, request and response sizes, a deadline, status lines on
a callback instead of stdout, and every failure as a :class:`RemoteFailure` (a ``UserError``) that says
what went wrong — connection refused, timeout, bad API key, model not hosted, or an exception on the
server — and names the request.

What a server offers is read without sending anything: :func:`hosted_models` parses its ``GET /status``
(``cdsl models``), and :func:`check_versions` compares its nnsight (``GET /env``) with this client's
before the first request to each host, since a request built by another nnsight version does not
deserialize there.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nnsight
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError
from nnsight.schema.config import CONFIG
from nnsight.schema.response import ResponseModel, Status

from constraintdsl.errors import UserError
from constraintdsl.runtime import extraction, interventions, scoring

__all__ = [
    "ALLOWED_IMPORTS",
    "SERVER_INFO_TIMEOUT",
    "HostedModel",
    "NdifBackend",
    "RemoteFailure",
    "api_key",
    "backend_for",
    "check_payloads",
    "check_versions",
    "client_nnsight_version",
    "collect",
    "hosted_models",
    "parse_status",
    "register_runtime",
    "resolve_host",
    "server_nnsight_version",
]

# What the public NDIF lets user code import (DESIGN §6); the runtime must stay inside it.
ALLOWED_IMPORTS = frozenset({"torch", "math", "typing", "collections", "numpy", "einops", "operator", "enum"})

Progress = Callable[[str], None]


class RemoteFailure(UserError):
    """A remote run that failed; ``kind`` says how and ``request_id`` names the request when it got one.

    Kinds: ``refused`` (nothing listens at the host), ``unreachable`` (other network errors),
    ``timeout``, ``auth`` (missing or invalid API key), ``not_hosted`` (the server cannot serve the
    model), ``server`` (the request ran and raised on the server), ``lost`` (the connection dropped
    mid-run), ``rejected`` (the server refused the request for another reason), ``model`` (the model
    cannot be named remotely), ``payload`` (checked before sending: a layer or hidden size the model
    lacks), ``version`` (checked before sending: the server runs another nnsight version than this
    client).  ``detail`` is the server's own text, kept whole.
    """

    def __init__(
        self,
        kind: str,
        where: str,
        message: str,
        hint: str | None = None,
        *,
        request_id: str | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(where, message, hint)
        self.kind = kind
        self.request_id = request_id
        self.detail = detail


_registered = False


def register_runtime() -> None:
    """Make the torch-only modules that run inside a trace (:mod:`constraintdsl.runtime`'s
    ``interventions``, ``scoring`` and ``extraction``) travel by value with every remote request (idempotent)."""
    global _registered
    if not _registered:
        nnsight.register(interventions)
        nnsight.register(scoring)
        nnsight.register(extraction)
        _registered = True


def resolve_host(remote: bool | str) -> str:
    """The server URL: ``remote`` itself when it is a URL, else ``NDIF_HOST``, else nnsight's configured host."""
    host = (remote if isinstance(remote, str) else os.environ.get("NDIF_HOST") or CONFIG.API.HOST).rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise UserError("--host", f"{host!r} is not a server URL", "give http://HOST:PORT or https://HOST")
    return host


def api_key() -> str | None:
    """The NDIF API key: ``NDIF_API_KEY``, else nnsight's config (``nnsight login`` stores it there)."""
    return os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY or None


def model_key(model: Any) -> str:
    """The key the server knows ``model`` by, or a clear error when it has none (a model built in memory).

    nnsight asks the Hub to canonicalize the repo id; a local folder is named by its own path instead
    (only a server that shares the disk, like a self-hosted one, can serve it)."""
    repo_id = getattr(model, "repo_id", None)
    if isinstance(repo_id, str) and repo_id and (Path(repo_id).is_absolute() or Path(repo_id).is_dir()):
        import nnsight.modeling.huggingface as hf

        hf._ID_CACHE.setdefault(repo_id, repo_id)
    try:
        return str(model.to_model_key())
    except Exception as e:
        raise RemoteFailure(
            "model",
            "--model",
            f"this model cannot run remotely: nnsight cannot name it for a server ({type(e).__name__}: {e})",
            "load it by Hugging Face id (or a folder the server shares) instead of passing a model object",
        ) from None


def check_payloads(model: Any, payloads: Iterable[dict[str, Any] | None]) -> None:
    """Check, before anything is sent, that every site path of every payload exists in ``model`` and that
    its directions have the model's hidden size; raises :class:`RemoteFailure` (kind ``payload``)."""
    hidden = _hidden_size(model)
    for payload in payloads:
        for site in (payload or {}).get("sites", ()):
            path = str(site["path"])
            node = model
            for part in path.split("."):
                try:
                    node = getattr(node, part)
                except Exception:
                    raise RemoteFailure(
                        "payload",
                        path,
                        f"the model has no module {path} (layer {site.get('layer')}, {site.get('site')}); "
                        "nothing was sent",
                        "compile the spec against the model you run it on (its layer count differs)",
                    ) from None
            if hidden is not None:
                for width in _widths(site):
                    if width != hidden:
                        raise RemoteFailure(
                            "payload",
                            path,
                            f"a direction at {path} has {width} dimensions but the model's hidden size is "
                            f"{hidden}; nothing was sent",
                            "compile the spec against the model you run it on",
                        )


def _hidden_size(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    text = getattr(config, "text_config", None)
    value = getattr(text, "hidden_size", None)
    return value if isinstance(value, int) else None


def _widths(site: dict[str, Any]) -> list[int]:
    widths = [int(a["u"].shape[-1]) for a in site.get("actions", ())]
    dirs = site.get("dirs")
    if dirs is not None and dirs.numel():
        widths.append(int(dirs.shape[-1]))
    widths.extend(int(r["u"].shape[-1]) for r in site.get("gate_reads", ()))
    return widths


@dataclass
class RequestStats:
    """What one request cost on the wire: serialized request bytes, result bytes, seconds, statuses seen."""

    request_bytes: int = 0
    response_bytes: int = 0
    seconds: float = 0.0
    statuses: list[str] = field(default_factory=list)


class NdifBackend(RemoteBackend):  # type: ignore[misc]
    """nnsight's ``RemoteBackend`` with a deadline, status lines on ``progress``, sizes in ``stats``,
    the request id in ``job_id`` as soon as the server assigns it, and failures as :class:`RemoteFailure`."""

    def __init__(
        self,
        key: str,
        host: str,
        *,
        key_env: dict[str, Any] | None = None,
        blocking: bool = True,
        job_id: str | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(key, host=host, api_key=api_key(), env=key_env, blocking=blocking, job_id=job_id)
        self.timeout = timeout
        self.progress = progress
        self.stats = RequestStats()
        self.display.enabled = False  # status goes to ``progress`` (stderr in the CLI), never stdout
        self._last_status: str | None = None

    # -- sizes and ids ------------------------------------------------------------------------------
    def _serialize(self, tracer: Any) -> bytes:
        blob: bytes = super()._serialize(tracer)
        self.stats.request_bytes = len(blob)
        return blob

    def finalize(self, content: bytes) -> Any:
        self.stats.response_bytes = len(content)
        return super().finalize(content)

    def _post(self, request: Any, blob: bytes) -> ResponseModel:
        import httpx

        try:
            response: ResponseModel = super()._post(request, blob)
        except RemoteError as e:
            cause = e.__cause__
            if isinstance(cause, httpx.HTTPStatusError):
                raise self._http_failure(cause.response.status_code, str(e)) from None
            raise self._network_failure(cause if isinstance(cause, BaseException) else e) from None
        self.job_id = response.id
        return response

    def note(self, response: ResponseModel) -> bool:
        status = response.status.value
        if self.progress is not None and status != self._last_status and response.status != Status.LOG:
            text = f" {response.description}" if response.description else ""
            self.progress(f"[{response.id}] {status.lower()}{text}")
        if response.status != Status.LOG:
            self._last_status = status
            self.stats.statuses.append(status)
        if response.status == Status.ERROR:
            raise self._server_failure(response.id or self.job_id, response.description)
        return bool(response.status == Status.COMPLETED)

    # -- the blocking wait, with a deadline --------------------------------------------------------
    def request(self, request: Any, tracer: Any) -> Any:
        import websocket

        started = time.perf_counter()
        blob = self._serialize(tracer)
        headers = {"ndif-api-key": self.api_key} if self.api_key else None
        try:
            connect = 10.0 if self.timeout is None else max(0.1, min(10.0, self.timeout))
            connection = websocket.create_connection(f"{self.ws_host}/subscribe", header=headers, timeout=connect)
        except websocket.WebSocketBadStatusException as e:
            raise self._http_failure(int(e.status_code), str(e)) from None
        except (OSError, websocket.WebSocketException) as e:
            raise self._network_failure(e) from None
        try:
            try:
                request.session_id = json.loads(connection.recv())["session_id"]
            except (OSError, ValueError, KeyError, TypeError, websocket.WebSocketException) as e:
                raise self._lost_failure(f"{type(e).__name__}: {e}") from None
            self.send(request, blob)
            connection.settimeout(0.25)
            while True:
                if self.timeout is not None and time.perf_counter() - started > self.timeout:
                    raise self._timeout_failure()
                try:
                    message = connection.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                except (OSError, websocket.WebSocketException) as e:
                    raise self._lost_failure(f"{type(e).__name__}: {e}") from None
                if not message:  # a close frame: the server shut the connection (it stopped or restarted)
                    raise self._lost_failure("the server closed the connection")
                response = self.parse(message)
                result = self.handle(response)
                if response.status == Status.COMPLETED:
                    self.stats.seconds = time.perf_counter() - started
                    return result
        finally:
            connection.close()

    def poll(self, tracer: Any = None) -> Any:
        import httpx

        try:
            return super().poll(tracer)
        except httpx.HTTPStatusError as e:
            raise self._http_failure(e.response.status_code, str(e)) from None
        except httpx.HTTPError as e:
            raise self._network_failure(e) from None

    # -- failures -----------------------------------------------------------------------------------
    def _network_failure(self, error: BaseException) -> RemoteFailure:
        kind, text = _network_kind(error)
        if kind == "timeout":
            return self._timeout_failure(text)
        return _connection_failure(kind, self.host, text, request_id=self.job_id)

    def _lost_failure(self, why: str) -> RemoteFailure:
        job = f"request {self.job_id}" if self.job_id else "the request"
        return RemoteFailure(
            "lost",
            self.host,
            f"the connection to NDIF at {self.host} was lost while {job} was running ({why}); no result was kept",
            "check that the server is still up, then run again",
            request_id=self.job_id,
            detail=why,
        )

    def _timeout_failure(self, detail: str = "") -> RemoteFailure:
        limit = f" after {self.timeout:g} s" if self.timeout is not None else ""
        job = f"request {self.job_id}" if self.job_id else "the request"
        return RemoteFailure(
            "timeout",
            self.host,
            f"{job} to {self.host} timed out{limit}",
            "raise --timeout, or submit with --no-wait and fetch it later with `cdsl job ID`"
            if self.job_id
            else "raise --timeout; the server may be busy or unreachable",
            request_id=self.job_id,
            detail=detail,
        )

    def _http_failure(self, status: int, text: str) -> RemoteFailure:
        if status in (401, 403) or "api key" in text.lower():
            return _auth_failure(self.host, status, text)
        return RemoteFailure(
            "rejected",
            self.host,
            f"NDIF at {self.host} refused the request (HTTP {status}): {_detail(text)}",
            "the server may be starting or overloaded; try again shortly",
            detail=text,
        )

    def _server_failure(self, request_id: str | None, description: str) -> RemoteFailure:
        lowered = description.lower()
        if "could not deploy" in lowered or "not deployed" in lowered or "no deployment" in lowered:
            return RemoteFailure(
                "not_hosted",
                self.model_key.split(":", 1)[-1],
                f"NDIF at {self.host} does not host this model (request {request_id}): {_last_line(description)}",
                _hosted_hint(self.host),
                request_id=request_id,
                detail=description,
            )
        return RemoteFailure(
            "server",
            self.host,
            f"request {request_id} failed on the server: {_last_line(description)}",
            None,
            request_id=request_id,
            detail=description,
        )


def _network_kind(error: BaseException) -> tuple[str, str]:
    """How a network error failed — ``refused``, ``timeout`` or ``unreachable`` — and its text."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, ConnectionRefusedError) or "refused" in text.lower():
        return "refused", text
    if "timed out" in text.lower() or "timeout" in type(error).__name__.lower():
        return "timeout", text
    return "unreachable", text


def _connection_failure(kind: str, host: str, text: str, *, request_id: str | None = None) -> RemoteFailure:
    """A ``refused`` or ``unreachable`` failure, worded the same for every request to ``host``."""
    if kind == "refused":
        return RemoteFailure(
            "refused",
            host,
            f"could not connect to NDIF at {host}: connection refused",
            "is the server running? check --host / NDIF_HOST",
            request_id=request_id,
            detail=text,
        )
    return RemoteFailure(
        "unreachable",
        host,
        f"could not reach NDIF at {host} ({text})",
        "check the host name and your network",
        request_id=request_id,
        detail=text,
    )


def _auth_failure(host: str, status: int, text: str) -> RemoteFailure:
    return RemoteFailure(
        "auth",
        host,
        f"NDIF at {host} refused the API key (HTTP {status}): {_detail(text)}",
        "set NDIF_API_KEY or run `nnsight login` (keys from https://login.ndif.us)",
        detail=text,
    )


def _detail(text: str) -> str:
    return text.removeprefix("Failed to send request: ").strip() or "no detail"


def _last_line(text: str) -> str:
    """The exception line of a server traceback (its last non-empty line), or the whole text."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no detail"


# -- what a server offers: its models (GET /status) and its nnsight version (GET /env) --------------

SERVER_INFO_TIMEOUT = 5.0  # seconds for GET /status and GET /env (connect and read)

# application_state from healthiest to worst; a model's replicas fold into the best one
_STATE_RANK = {"RUNNING": 0, "DEPLOYING": 1, "NOT_STARTED": 2, "WARM": 3, "COLD": 4, "UNHEALTHY": 5}
_ACTOR = "ModelActor:"


@dataclass(frozen=True)
class HostedModel:
    """A model an NDIF server knows, from its ``GET /status``: the id a client names it by (``repo_id``,
    a Hub id or, on a self-hosted server, a folder), its ``state`` (the server's ``application_state``:
    ``RUNNING``, ``DEPLOYING``, ``UNHEALTHY``…; for a model without a running actor its deployment level,
    e.g. ``COLD``: downloaded, not running), and what the server tells about it, None when it does not."""

    repo_id: str
    state: str
    level: str | None = None
    revision: str | None = None
    task: str | None = None
    dtype: str | None = None
    n_params: int | None = None
    replicas: int = 0
    model_key: str | None = None

    @property
    def running(self) -> bool:
        """Whether a request for this model is served now (an actor is up)."""
        return self.state == "RUNNING"

    def to_dict(self) -> dict[str, Any]:
        """Every field, and ``running``, as JSON-ready values."""
        return {**asdict(self), "running": self.running}


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _key_fields(model_key: str) -> dict[str, Any]:
    """The JSON half of a model key (``module.Class:{"repo_id": …, "revision": …}``), or {}."""
    _, _, rest = model_key.partition(":")
    try:
        fields = json.loads(rest)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def _entry(name: str, value: Any) -> HostedModel | None:
    """One ``deployments`` entry as a model, or None when it names none (junk is skipped, never raised)."""
    if not isinstance(value, dict):
        return None
    key = _text(value.get("model_key"))
    at = name.find(_ACTOR)
    is_actor = at == 0 or (at > 0 and name[at - 1] == ":")
    if key is None and is_actor:
        key = _text(name[at + len(_ACTOR) :])
    fields = _key_fields(key) if key else {}
    state = _text(value.get("application_state"))
    level = _text(value.get("deployment_level"))
    repo_id = _text(fields.get("repo_id")) or _text(value.get("repo_id"))
    if repo_id is None and not is_actor and (state or level):
        repo_id = _text(name)  # a COLD model is listed under its repo id
    if repo_id is None:
        return None
    return HostedModel(
        repo_id=repo_id,
        state=(state or level or "UNKNOWN").upper(),
        level=level.upper() if level else None,
        revision=_text(fields.get("revision")) or _text(value.get("revision")),
        task=_text(fields.get("task")) or _text(value.get("task")),
        dtype=_text(value.get("dtype")),
        n_params=_count(value.get("n_params")),
        replicas=1 if is_actor else 0,
        model_key=key,
    )


def _fold(held: HostedModel, new: HostedModel) -> HostedModel:
    """Two replicas of one model as one: the healthier state, every detail either knows, replicas added."""
    best, other = sorted((held, new), key=lambda m: _STATE_RANK.get(m.state, len(_STATE_RANK)))
    return HostedModel(
        repo_id=best.repo_id,
        state=best.state,
        level=best.level or other.level,
        revision=best.revision or other.revision,
        task=best.task or other.task,
        dtype=best.dtype or other.dtype,
        n_params=best.n_params if best.n_params is not None else other.n_params,
        replicas=held.replicas + new.replicas,
        model_key=best.model_key or other.model_key,
    )


def parse_status(data: Any) -> list[HostedModel]:
    """The models in an NDIF ``GET /status`` answer, one per model (its replicas folded), running first.

    Tolerant of what a server version may send: entries it cannot read (not an object, no model id)
    are skipped, and an answer without a ``deployments`` object lists nothing."""
    deployments = data.get("deployments") if isinstance(data, dict) else None
    if isinstance(deployments, list):  # not what ndif 0.1.2 sends; read it the same way if a server does
        items = [(str(v.get("name") or v.get("model_key") or ""), v) for v in deployments if isinstance(v, dict)]
    elif isinstance(deployments, dict):
        items = [(str(k), v) for k, v in deployments.items()]
    else:
        return []
    models: dict[tuple[str, str | None], HostedModel] = {}
    for name, value in items:
        model = _entry(name, value)
        if model is None:
            continue
        ident = (model.repo_id, model.revision) if model.model_key is None else (model.model_key, None)
        held = models.get(ident)
        models[ident] = model if held is None else _fold(held, model)
    return sorted(models.values(), key=lambda m: (not m.running, m.repo_id, m.revision or "", m.task or ""))


def _get_json(host: str, path: str, timeout: float) -> Any:
    """``GET {host}{path}`` as JSON, with the API key when one is set; every failure a :class:`RemoteFailure`."""
    import httpx

    key = api_key()
    try:
        response = httpx.get(
            f"{host}{path}", headers={"ndif-api-key": key} if key else None, timeout=timeout, follow_redirects=True
        )
    except httpx.TimeoutException as e:
        raise RemoteFailure(
            "timeout",
            host,
            f"NDIF at {host} did not answer GET {path} within {timeout:g} s",
            "the server may be busy or unreachable; try again, and check --host / NDIF_HOST",
            detail=f"{type(e).__name__}: {e}",
        ) from None
    except httpx.HTTPError as e:
        kind, text = _network_kind(e)
        raise _connection_failure("unreachable" if kind == "timeout" else kind, host, text) from None
    if response.status_code in (401, 403):
        raise _auth_failure(host, response.status_code, response.text)
    if response.status_code != 200:
        raise RemoteFailure(
            "rejected",
            host,
            f"NDIF at {host} answered GET {path} with HTTP {response.status_code}: {_said(response.text)}",
            "the server may be starting or overloaded; try again shortly"
            if response.status_code >= 500
            else "is --host an NDIF server? check --host / NDIF_HOST",
            detail=response.text,
        )
    try:
        return response.json()
    except ValueError:
        raise RemoteFailure(
            "rejected",
            host,
            f"NDIF at {host} answered GET {path} with something that is not JSON",
            "is --host an NDIF server? check --host / NDIF_HOST",
            detail=response.text[:2000],
        ) from None


def _said(text: str) -> str:
    """What an error answer says: its JSON ``detail`` when it has one, else its text (cut to one short line)."""
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError):
        detail = None
    said = detail if isinstance(detail, str) and detail.strip() else " ".join(text.split())
    return (said[:200] + "…" if len(said) > 200 else said) or "no detail"


def hosted_models(host: str, *, timeout: float = SERVER_INFO_TIMEOUT) -> list[HostedModel]:
    """The models the NDIF server at ``host`` hosts, from its ``GET /status`` (see :func:`parse_status`).

    Network and HTTP problems raise :class:`RemoteFailure` (``refused``, ``unreachable``, ``timeout``,
    ``auth``, ``rejected``)."""
    return parse_status(_get_json(host, "/status", timeout))


def _hosted_hint(host: str) -> str:
    """For a model the server does not host: which ones it does (asked now, best effort)."""
    fallback = "see which models are hosted with `python -c 'import nnsight; print(nnsight.status())'`"
    try:
        models = hosted_models(host)
    except RemoteFailure:
        return fallback
    if not models:
        return fallback
    shown = [f"{m.repo_id} ({m.state.lower()})" for m in models[:8]]
    more = f" and {len(models) - 8} more" if len(models) > 8 else ""
    return f"it hosts {', '.join(shown)}{more}; use one of those as --model (`cdsl models --host {host}` lists them)"


def client_nnsight_version() -> str:
    """The nnsight version this client runs (its installed distribution's)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnsight")
    except PackageNotFoundError:
        return str(getattr(nnsight, "__version__", "unknown"))


def server_nnsight_version(host: str, *, timeout: float = SERVER_INFO_TIMEOUT) -> str | None:
    """The nnsight version the NDIF server at ``host`` runs, from its ``GET /env``; None when that cannot
    be read (no answer, an error, or no nnsight in it): the caller goes on without it."""
    try:
        env = _get_json(host, "/env", timeout)
    except RemoteFailure:
        return None
    packages = env.get("packages") if isinstance(env, dict) else None
    return _text(packages.get("nnsight")) if isinstance(packages, dict) else None


# host -> the server's nnsight version (None: unknown), read once per host per process
_server_versions: dict[str, str | None] = {}


def check_versions(host: str, *, timeout: float | None = None) -> None:
    """Before the first request to ``host``: raise :class:`RemoteFailure` (kind ``version``) when its
    nnsight differs from this client's, since the server could not read what this client sends.

    The server's version is asked once per host per process (``GET /env``, at most ``timeout`` or
    :data:`SERVER_INFO_TIMEOUT` seconds); when it cannot be read, nothing is blocked."""
    if host not in _server_versions:
        wait = SERVER_INFO_TIMEOUT if timeout is None else max(0.1, min(SERVER_INFO_TIMEOUT, timeout))
        _server_versions[host] = server_nnsight_version(host, timeout=wait)
    server = _server_versions[host]
    client = client_nnsight_version()
    if server is None or server == client:
        return
    raise RemoteFailure(
        "version",
        host,
        f"NDIF at {host} runs nnsight {server} but this client has nnsight {client}; "
        "a request from another nnsight version cannot run there, so nothing was sent",
        f"install the server's version: pip install nnsight=={server}",
        detail=f"client nnsight {client}, server nnsight {server}",
    )


def backend_for(
    model: Any,
    remote: bool | str,
    *,
    blocking: bool = True,
    job_id: str | None = None,
    timeout: float | None = None,
    progress: Progress | None = None,
) -> NdifBackend:
    """A backend that runs ``model``'s trace on the server ``remote`` names (True: the configured host).

    Registers the runtime for by-value transport first, and checks (once per host) that the server runs
    this client's nnsight version (:func:`check_versions`)."""
    register_runtime()
    key = model_key(model)
    host = resolve_host(remote)
    check_versions(host, timeout=timeout)
    env_of = getattr(model, "_remoteable_get_env", None)
    return NdifBackend(
        key,
        host,
        key_env=env_of() if callable(env_of) else None,
        blocking=blocking,
        job_id=job_id,
        timeout=timeout,
        progress=progress,
    )


def collect(
    host: str, key: str, job_id: str, *, wait: float | None = 0.0, progress: Progress | None = None
) -> Any | None:
    """The saved values of request ``job_id`` (sent without waiting to ``host`` for the model ``key``), or None
    while it still runs; ``wait``: seconds to keep polling (None: until done)."""
    check_versions(host)  # a result pickled by another nnsight would not load here
    backend = NdifBackend(key, host, blocking=False, job_id=job_id, progress=progress)
    started = time.perf_counter()
    while True:
        result = backend.poll()
        if result is not None:
            return result
        if wait is not None and time.perf_counter() - started >= wait:
            return None
        time.sleep(0.25)
