"""``cdsl models``: the models an NDIF server hosts and whether each is running (parsing and work).

It reads the server's ``GET /status`` (see :func:`constraintdsl.models.ndif.hosted_models`); nothing is
sent to a model.  nnsight's own ``nnsight.status()`` lists only models at deployment level HOT or WARM,
which a self-hosted server's status may not carry.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from constraintdsl.errors import UserError
from constraintdsl.tables import text_table

from .common import EXIT_OK

if TYPE_CHECKING:
    from constraintdsl.models.ndif import HostedModel

__all__ = ["list_models", "models_table", "register"]


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return str(n)


def models_table(models: list[HostedModel]) -> str:
    """A plain-text table: model id, state, deployment level, dtype and parameter count ("-" when unknown)."""
    body = [
        [
            m.repo_id + (f"@{m.revision}" if m.revision and m.revision != "main" else ""),
            m.state.lower(),
            (m.level or "-").lower(),
            (m.dtype or "-").removeprefix("torch."),
            _params(m.n_params),
        ]
        for m in models
    ]
    return text_table(["model", "state", "level", "dtype", "params"], body)


def list_models(host: str | None, remote: bool, *, fmt: str, out: TextIO) -> int:
    """``cdsl models``: what the NDIF server at ``host`` (or, with ``remote``, the configured one) hosts,
    as a table or (``fmt="json"``) a JSON list of objects; a usage error without ``host`` or ``remote``."""
    if host is None and not remote:
        raise UserError(
            "--remote",
            "`cdsl models` lists the models an NDIF server hosts, so it needs a server: give --remote "
            "(NDIF_HOST or nnsight's configured host) or --host URL",
            "e.g. cdsl models --host http://127.0.0.1:8001",
        )
    if host is not None:
        from constraintdsl.compiler.preflight import check_host

        check_host(host)
    from constraintdsl.models.ndif import hosted_models, resolve_host

    target = resolve_host(host if host is not None else True)
    models = hosted_models(target)
    if fmt == "json":
        out.write(json.dumps([m.to_dict() for m in models], indent=2) + "\n")
    elif not models:
        out.write(f"NDIF at {target} lists no models\n")
    else:
        running = sum(m.running for m in models)
        out.write(f"NDIF at {target}: {len(models)} model(s), {running} running\n\n")
        out.write(models_table(models) + "\n")
    return EXIT_OK


def _models_cmd(
    remote: Annotated[
        bool, typer.Option("--remote", help="ask the configured NDIF server (NDIF_HOST or nnsight's config)")
    ] = False,
    host: Annotated[str | None, typer.Option("--host", help="NDIF server URL (implies --remote)")] = None,
    json_: Annotated[bool, typer.Option("--json", help="print JSON: a list of objects")] = False,
) -> None:
    """List the models an NDIF server hosts and whether each is running (needs --remote or --host)."""
    raise typer.Exit(list_models(host, remote, fmt="json" if json_ else "text", out=sys.stdout))


def register(app: typer.Typer) -> None:
    """Add ``models`` to the ``cdsl`` app."""
    app.command("models")(_models_cmd)
