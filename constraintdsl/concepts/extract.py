"""Concept extraction from contrastive pairs, and calibration of the resulting directions.

Token selection (the tokens whose activations count):

- chat-shaped pairs: the assistant reply tokens only.  The prompt is rendered with the tokenizer's chat
  template (``user`` message, generation prompt) and tokenized; the completion is tokenized on its own and
  appended, exactly as generated tokens follow a prompt.  Template and prompt tokens are never counted.
- plain pairs: every token except the first of each sequence (the attention sink, whose norm dwarfs all
  others) — with a tokenizer that adds a BOS token that first token is the BOS.
- padding is never counted (batches are right-padded with an attention mask; rows never see each other).

A pair set's ``read`` narrows that selection (:data:`constraintdsl.pairs.READS`): ``all`` (default) counts every
such token, ``first`` only the first of them (the first completion token; for plain pairs the token after the
sink), ``last`` only the last one (the final completion token: the answer letter of a "(A)"/"(B)" pair).

Methods (per layer, from the ``train`` split):

- ``mean``: ``normalize(mean(positive tokens) - mean(negative tokens))``, token-weighted, so the pole distance
  ``pos_mean - neg_mean`` of the calibration equals the norm of that difference exactly;
- ``pca``: the first principal component (uncentered, i.e. top eigenvector of the second moment) of the paired
  differences of per-example mean activations, signed so the positive pole's token mean projects higher.

Every sequence is forwarded once (when the dataset has a ``test`` split):

- the train split: streaming sums only, nothing per token is kept.  Per-pole token sums give the ``mean``
  direction and, once any direction ``u`` is known, the exact token-weighted pole means of projections
  (``mu_pos . u``, ``mu_neg . u``), the pole distance (the calibrated unit) and the mean of all train
  projections.  The std of all train projections is exact too: an ``H x H`` sum of outer products per layer
  (centered on the first batch's mean) gives the second moment along ``u``, ``u^T M u / n``.  It costs one
  ``[n, H]^T [n, H]`` product per layer and batch (about 6% of an extraction on SmolLM2) and 8 H^2 bytes per
  layer.  ``pca`` adds an ``H x H`` second moment of paired differences;
- the test split (held out; the directions are final by then): each counted token's scalar projection.  They
  give the percentiles (both poles' tokens: the honest out-of-sample distribution of projections) and the
  held-out AUROC of per-example mean projections.  Metadata ``calibration_split`` is ``test``.

Without a test split the train split is forwarded a second time to project its tokens: percentiles (and the
std) then come from the train projections, AUROC is NaN, and ``calibration_split`` is ``train``.

Each forward stops right after the deepest layer needed.  A batch's partial sums are formed in float32 (one
matrix product per layer) and accumulated across batches in float64; projections are computed in float64.

Inside the trace each layer is reduced by :mod:`constraintdsl.runtime.extraction` (torch only); only those reductions
leave the trace.  With ``remote`` the same trace runs on an NDIF server, one request per batch, and the module
travels by value, so a remote extraction equals a local one by construction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import numpy as np
import torch

from constraintdsl.errors import SpecError, UserError
from constraintdsl.models.backend import on_device, run_backend
from constraintdsl.models.sites import SITES, arch_sites, num_layers
from constraintdsl.runtime import extraction

from .artifact import FORMAT_VERSION, PERCENTILE_LEVELS, Calibration, ConceptArtifact, tool_version
from .pairs import PairSet

__all__ = [
    "METHODS",
    "Calibration",
    "ConceptArtifact",
    "EncodedItem",
    "auroc",
    "encode_pairs",
    "extract",
    "layer_table",
    "recommended_layers",
    "resolve_layers",
    "token_selection",
]

METHODS: tuple[str, ...] = ("mean", "pca")

TOKEN_SELECTION_CHAT = (
    "chat: assistant completion tokens only (prompt and chat-template tokens excluded); padding excluded"
)
TOKEN_SELECTION_PLAIN = "plain: every token but the first of each sequence (attention sink); padding excluded"
_READ_SELECTION = {
    "all": "",
    "first": "; read: first (only the first counted token of each completion)",
    "last": "; read: last (only the last token of each completion)",
}


def token_selection(chat: bool, read: str = "all") -> str:
    """The artifact's ``token_selection`` metadata: which tokens of a pair set are counted."""
    return (TOKEN_SELECTION_CHAT if chat else TOKEN_SELECTION_PLAIN) + _READ_SELECTION[read]


@dataclass(frozen=True, slots=True)
class EncodedItem:
    """One tokenized completion: ``ids``, counted tokens ``ids[start:end]`` (``end`` None: to the end), its
    pair, pole (+1/-1) and split."""

    ids: tuple[int, ...]
    start: int
    pair: int
    pole: int
    split: str
    end: int | None = None

    @property
    def stop(self) -> int:
        """The end of the counted tokens (exclusive)."""
        return len(self.ids) if self.end is None else self.end

    @property
    def counted(self) -> int:
        """How many tokens are counted."""
        return self.stop - self.start


# ------------------------------------------------------------------------------------------ helpers


def _unwrap(model: Any) -> Any:
    """An nnsight ``TransformersModel`` for ``model`` (raw HF models are wrapped with their tokenizer)."""
    if isinstance(model, torch.nn.Module):
        raise UserError(
            "--model",
            "extraction needs an nnsight model (raw Hugging Face module given)",
            "wrap it: nnsight.TransformersModel(hf_model, tokenizer=tokenizer)",
        )
    return model


def _device(model: Any) -> torch.device:
    """Where the model's weights are (the CPU for a model built lazily for a remote run)."""
    inner = getattr(model, "__dict__", {}).get("_module")
    if not isinstance(inner, torch.nn.Module):
        raise UserError("--model", f"expected an nnsight TransformersModel, got {type(model).__name__}")
    device = next(inner.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


def resolve_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    """Absolute, sorted, distinct layer indices (negative ones count from the end); ``None`` means all."""
    n = num_layers(model)
    if layers is None:
        return list(range(n))
    out: set[int] = set()
    for layer in layers:
        index = layer + n if layer < 0 else layer
        if not 0 <= index < n:
            raise UserError("--layers", f"layer {layer} is out of range: the model has {n} layers (0..{n - 1})")
        out.add(index)
    if not out:
        raise UserError("--layers", "no layers selected")
    return sorted(out)


def encode_pairs(tokenizer: Any, pairs: PairSet) -> list[EncodedItem]:
    """Tokenize both completions of every pair (positive first), marking which tokens are counted (the
    completion's, narrowed by the set's ``read``: all of them, the first or the last)."""
    items: list[EncodedItem] = []
    chat = pairs.is_chat
    if chat and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "--model",
            f"'{pairs.path}' has chat-shaped pairs, but the model's tokenizer has no chat template",
            "use an instruct/chat model, or drop 'prompt' from the pairs",
        )
    for index, pair in enumerate(pairs.pairs):
        prefix: list[int] = []
        if chat:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": pair.prompt}], tokenize=False, add_generation_prompt=True
            )
            prefix = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        for pole, text in ((1, pair.positive), (-1, pair.negative)):
            if chat:
                body = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                ids, start = prefix + body, len(prefix)
            else:
                ids, start = list(tokenizer(text)["input_ids"]), 1
            if len(ids) <= start:
                where = (pair.positive_span if pole > 0 else pair.negative_span) or pair.span
                message = f"the {'positive' if pole > 0 else 'negative'} text has no tokens to count"
                hint = "a plain text needs at least two tokens (the first one is never counted)"
                if where is not None:
                    raise SpecError.single(where, message, hint)
                raise UserError(pairs.path, message, hint)
            end = None
            if pairs.read == "first":
                end = start + 1
            elif pairs.read == "last":
                start = len(ids) - 1
            items.append(EncodedItem(tuple(int(i) for i in ids), start, index, pole, pair.split, end))
    return items


def _batches(items: list[EncodedItem], batch_size: int) -> Iterator[list[EncodedItem]]:
    """Chunks of ``batch_size`` rows, pairs kept adjacent and ordered by length (less padding)."""
    by_pair: dict[int, list[EncodedItem]] = {}
    for item in items:
        by_pair.setdefault(item.pair, []).append(item)
    ordered = sorted(by_pair.values(), key=lambda rows: -max(len(r.ids) for r in rows))
    flat = [row for rows in ordered for row in rows]
    for i in range(0, len(flat), batch_size):
        yield flat[i : i + batch_size]


def _tensors(batch: list[EncodedItem], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and the ``[B, T]`` mask of counted tokens."""
    width = max(len(item.ids) for item in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    counted = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, item in enumerate(batch):
        n = len(item.ids)
        ids[row, :n] = torch.tensor(item.ids, dtype=torch.long)
        mask[row, :n] = 1
        counted[row, item.start : item.stop] = True
    return ids, mask, counted


def _site_path(model: Any, layer: int, site: str) -> str:
    """The dotted path of ``site``'s module at ``layer`` from the model's root (what the trace walks)."""
    sites = arch_sites(model)
    path = f"{sites.layers}.{layer}"
    return path if site == "resid" else f"{path}.{sites.attn if site == 'attn' else sites.mlp}"


def _run(
    model: Any,
    paths: list[str],
    batch: list[EncodedItem],
    pad_id: int,
    job: dict[str, Any],
    backend: Any,
) -> list[Any]:
    """One forward over ``batch`` (one request when ``backend`` is remote); per layer in ``paths``, the
    reductions of :mod:`constraintdsl.runtime.extraction` that ``job`` asks for (see :meth:`_TrainSums.job` and
    :meth:`_Projections.job`).  Only those come back, never activations."""
    ids, mask, counted = _tensors(batch, pad_id)
    positions = torch.arange(ids.shape[1], dtype=torch.long).unsqueeze(0).expand_as(ids)
    inputs = on_device(model, {"input_ids": ids, "attention_mask": mask, "position_ids": positions})
    outs = _trace_batch(model, inputs, counted.to(inputs["input_ids"].device), paths, job, backend)
    if outs is None:
        raise RuntimeError("the extraction pass returned no result")
    return list(outs)


def _trace_batch(
    model: Any,
    inputs: dict[str, torch.Tensor],
    counted: torch.Tensor,
    paths: list[str],
    job: dict[str, Any],
    backend: Any,
) -> Any:
    """The forward block (nnsight captures it from this file's source; on NDIF this source runs).

    Each layer is reduced inside the trace as the forward reaches it, so no more than one layer's
    activations are kept; the trace stops right after the deepest layer in ``paths`` (nothing later runs).
    """
    outs = None
    with torch.no_grad(), model.trace(inputs, backend=backend) as tracer:
        outs = nnsight.save([])
        directions = job["directions"]
        if directions is None:
            membership, by_pole = extraction.batch_index(job["rows"], job["poles"])
        for index in range(len(paths)):
            envoy = model
            for part in paths[index].split("."):
                envoy = getattr(envoy, part)
            acts = extraction.counted(envoy.output, counted)
            if directions is None:
                shift = None if job["shifts"] is None else job["shifts"][index]
                into = None if job["into"] is None else job["into"][index]
                sums = extraction.train_sums(
                    acts, membership, by_pole, job["counts"], shift, job["second"], job["means"], into
                )
                outs.append(sums)
            else:
                outs.append(extraction.project(acts, directions[index]))
        tracer.stop()
    return outs


def auroc(positive: np.ndarray[Any, Any], negative: np.ndarray[Any, Any]) -> float:
    """Area under the ROC curve for scores of positives vs negatives (ties count one half); NaN if empty."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average rank of each distinct value (1-based), so tied scores share their mean rank.
    upper = np.cumsum(counts)
    mean_rank = upper - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def recommended_layers(artifact: ConceptArtifact, top: int = 3) -> list[int]:
    """Up to ``top`` recommended layers: highest held-out AUROC, ties broken by pole distance over std.

    Without a test split (AUROC NaN) the ranking uses pole distance over std alone.
    """
    cal = artifact.calibration
    if cal is None or artifact.layers is None:
        return []
    separation = cal.scale / np.maximum(cal.std, 1e-12)
    auc = np.where(np.isnan(cal.auroc), -1.0, np.round(cal.auroc.astype(np.float64), 6))
    order = sorted(range(len(artifact.layers)), key=lambda i: (-auc[i], -separation[i], artifact.layers[i]))  # type: ignore[index]
    return [artifact.layers[i] for i in order[:top]]


def layer_table(artifact: ConceptArtifact, top: int = 3) -> Any:
    """A ``rich`` table, one row per layer: pole means, pole distance, std, distance/std, AUROC, recommended.

    Recommended layers (marked ``*``) are :func:`recommended_layers`.
    """
    from rich.table import Table

    table = Table(title=f"concept {artifact.concept}")
    for name in ("layer", "neg mean", "pos mean", "pole distance", "std", "distance/std", "AUROC", "rec"):
        table.add_column(name, justify="right")
    cal = artifact.calibration
    if cal is None or artifact.layers is None:
        return table
    best = set(recommended_layers(artifact, top=top))
    for row, layer in enumerate(artifact.layers):
        auc = float(cal.auroc[row])
        table.add_row(
            str(layer),
            f"{cal.neg_mean[row]:.3f}",
            f"{cal.pos_mean[row]:.3f}",
            f"{cal.scale[row]:.3f}",
            f"{cal.std[row]:.3f}",
            f"{cal.scale[row] / max(float(cal.std[row]), 1e-12):.2f}",
            "n/a" if np.isnan(auc) else f"{auc:.3f}",
            "*" if layer in best else "",
        )
    return table


# ------------------------------------------------------------------------------------- accumulators


def _row_index(batch: list[EncodedItem], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counted tokens per row ``[B]``, pole per row ``[B]``, and the row of each counted token ``[n]``.

    Tokens are in the order :func:`_run` gathers them: row by row, left to right.
    """
    counts = torch.tensor([item.counted for item in batch], dtype=torch.long, device=device)
    poles = torch.tensor([item.pole for item in batch], dtype=torch.long, device=device)
    rows = torch.repeat_interleave(torch.arange(len(batch), device=device), counts)
    return counts, poles, rows


class _TrainSums:
    """Streaming sums over the train split, per layer; nothing per token is kept.

    - per-pole token sums and counts: the pole means, hence the ``mean`` direction, and the exact pole means
      and overall mean of the train projections on any direction;
    - with ``second_moment``: the ``H x H`` sum of outer products of all counted train tokens, centered on a
      fixed shift (the first batch's mean, so that large common components do not cancel catastrophically),
      which gives the exact variance of the train projections on any direction;
    - with ``pca``: the ``H x H`` second moment of the paired differences of per-example means.

    A batch's partial sums are formed inside the trace (:func:`constraintdsl.runtime.extraction.train_sums`, float32
    matrix products), then added here to float64 accumulators.
    """

    def __init__(self, n_layers: int, *, pca: bool, second_moment: bool, local: bool = True) -> None:
        self.n_layers = n_layers
        self.local = local  # the trace runs in this process: moments may be folded in place
        self.pca = pca
        self.second_moment = second_moment
        self.sum: torch.Tensor | None = None  # [L, 2, H] float64: token sums of the positive, negative pole
        self.count = {1: 0, -1: 0}
        self.shift: torch.Tensor | None = None  # [L, H] float32
        self.centered: torch.Tensor | None = None  # [L, H, H] float64, sum of (x - shift)(x - shift)^T
        self.paired: torch.Tensor | None = None  # [L, H, H] float64, sum of d d^T over paired differences
        self.pending: dict[tuple[int, int], torch.Tensor] = {}  # (pair, pole) -> [L, H] per-example mean
        self.batches = 0  # batches finished

    def job(self, batch: list[EncodedItem], device: torch.device) -> dict[str, Any]:
        """What the trace needs to reduce ``batch`` (see :func:`_trace_batch`)."""
        counts, poles, rows = _row_index(batch, device)
        return {
            "directions": None,
            "rows": rows,
            "poles": poles,
            "counts": counts,
            "shifts": self.shift,  # None in the first batch: the trace takes that batch's mean
            "second": self.second_moment,
            "means": self.pca,
            # local runs fold each layer's H x H moment in place as it is computed (a remote run sends it back)
            "into": self.centered if self.local else None,
        }

    def add(self, batch: list[EncodedItem], outs: list[Any]) -> None:
        """Fold in one batch's per-layer reductions ``[pole_sums, shift, moment, row_means]``."""
        for pole in (1, -1):
            self.count[pole] += sum(item.counted for item in batch if item.pole == pole)
        row_means: torch.Tensor | None = None  # [L, B, H] float64 (pca only)
        for row, (pole_sums, shift, moment, means) in enumerate(outs):
            if self.sum is None:
                hidden = int(pole_sums.shape[1])
                self.sum = torch.zeros(self.n_layers, 2, hidden, dtype=torch.float64, device=pole_sums.device)
            device = self.sum.device
            hidden = int(self.sum.shape[2])
            self.sum[row] += pole_sums.to(device)
            if self.second_moment:
                if self.shift is None or self.centered is None:
                    self.shift = torch.zeros(self.n_layers, hidden, dtype=torch.float32, device=device)
                    self.centered = torch.zeros(self.n_layers, hidden, hidden, dtype=torch.float64, device=device)
                if self.batches == 0:
                    self.shift[row] = shift.to(device)
                if moment is not None:  # None: already folded in place (a local run)
                    self.centered[row].add_(moment.to(device))
            if self.pca:
                if row_means is None:
                    row_means = torch.zeros(self.n_layers, len(batch), hidden, dtype=torch.float64, device=device)
                row_means[row] = means.to(device)
        self.batches += 1
        if row_means is not None:
            self._pair_up(batch, row_means)

    def _pair_up(self, batch: list[EncodedItem], row_means: torch.Tensor) -> None:
        """For ``pca``: pair up per-example means (a pair may straddle two batches)."""
        diffs: list[torch.Tensor] = []
        for i, item in enumerate(batch):
            partner = self.pending.pop((item.pair, -item.pole), None)
            if partner is None:
                self.pending[(item.pair, item.pole)] = row_means[:, i].clone()
            else:
                diffs.append(row_means[:, i] - partner if item.pole == 1 else partner - row_means[:, i])
        if diffs:
            d = torch.stack(diffs, dim=1)  # [L, P, H]
            update = torch.bmm(d.mT, d)
            self.paired = update if self.paired is None else self.paired + update

    def pole_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-weighted mean activation ``[L, H]`` of the positive and of the negative pole."""
        assert self.sum is not None
        return self.sum[:, 0] / self.count[1], self.sum[:, 1] / self.count[-1]

    def projection_stats(self, directions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Exact statistics ``[L]`` of the train token projections on unit ``directions`` ``[L, H]``.

        ``pos_mean``, ``neg_mean`` and ``mean`` always; ``std`` (population) with ``second_moment``.
        """
        mu_pos, mu_neg = self.pole_means()
        n = self.count[1] + self.count[-1]
        assert self.sum is not None
        mu = self.sum.sum(1) / n
        out = {
            "pos_mean": (mu_pos * directions).sum(1),
            "neg_mean": (mu_neg * directions).sum(1),
            "mean": (mu * directions).sum(1),
        }
        if self.second_moment:
            assert self.shift is not None and self.centered is not None
            offset = ((mu - self.shift.to(torch.float64)) * directions).sum(1)  # mean of (x - shift) . u
            second = torch.einsum("lh,lhk,lk->l", directions, self.centered, directions) / n
            out["std"] = (second - offset**2).clamp(min=0.0).sqrt()
        return out


class _Projections:
    """Scalar projections of counted tokens on the finished unit directions (no activations are kept).

    Results go into arrays sized for all of ``items`` up front (no per-batch allocations that outlive it).
    """

    def __init__(self, directions: torch.Tensor, items: list[EncodedItem]) -> None:
        self.directions = directions  # [L, H] float64
        n_layers = directions.shape[0]
        self.tokens = np.zeros((n_layers, sum(item.counted for item in items)))  # [L, N]
        self.examples = np.zeros((n_layers, len(items)))  # [L, M] per-example mean projections
        self.example_poles = np.zeros(len(items), dtype=np.int64)
        self.token_offset = self.example_offset = 0

    def job(self, batch: list[EncodedItem], device: torch.device) -> dict[str, Any]:
        """What the trace needs to project ``batch`` (see :func:`_trace_batch`)."""
        self.directions = self.directions.to(device)
        return {"directions": self.directions}

    def add(self, batch: list[EncodedItem], outs: list[Any]) -> None:
        """Store one batch's token projections (``[n]`` float64 per layer) and its per-example means."""
        proj = torch.stack([o.to(torch.float64) for o in outs])  # [L, n]
        counts, _, rows = _row_index(batch, proj.device)
        per_row = torch.zeros(proj.shape[0], len(batch), dtype=torch.float64, device=proj.device)
        per_row = per_row.index_add_(1, rows, proj) / counts.to(torch.float64)
        t, e = self.token_offset, self.example_offset
        self.tokens[:, t : t + proj.shape[1]] = proj.cpu().numpy()
        self.examples[:, e : e + len(batch)] = per_row.cpu().numpy()
        self.example_poles[e : e + len(batch)] = [item.pole for item in batch]
        self.token_offset += proj.shape[1]
        self.example_offset += len(batch)

    def example_auroc(self) -> np.ndarray[Any, Any]:
        """Per layer: AUROC of per-example mean projections, positive vs negative examples."""
        poles = self.example_poles
        return np.array([auroc(row[poles == 1], row[poles == -1]) for row in self.examples])


# ------------------------------------------------------------------------------------------ extract


def _identity_metadata(model: Any) -> dict[str, str]:
    from constraintdsl.models.loading import model_identity

    ident = model_identity(model)
    return {
        "model_id": str(ident.id),
        "model_revision": str(ident.revision or ""),
        "architecture": str(ident.architecture),
        "hidden_size": str(ident.hidden_size),
        "num_layers": str(ident.num_layers),
    }


def _directions(sums: _TrainSums, method: str, pairs: PairSet) -> torch.Tensor:
    """Unit directions ``[L, H]`` (float64) from the train sums; see the module docstring for the methods."""
    mu_pos, mu_neg = sums.pole_means()
    diff = mu_pos - mu_neg  # [L, H]
    if method == "mean":
        norms = diff.norm(dim=1, keepdim=True)
        if bool((norms < 1e-12).any()):
            raise UserError(pairs.path, "the two poles have identical mean activations; no direction")
        unit: torch.Tensor = diff / norms
        return unit
    assert sums.paired is not None
    _, vectors = torch.linalg.eigh(sums.paired)  # ascending eigenvalues
    directions = vectors[:, :, -1]
    signs = torch.sign((directions * diff).sum(1, keepdim=True))
    signed: torch.Tensor = directions * torch.where(signs == 0, torch.ones_like(signs), signs)
    return signed


def extract(
    model: Any,
    pairs: PairSet,
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid",
    method: str = "mean",
    batch_size: int = 16,
    progress: bool = True,
    remote: bool | str = False,
    timeout: float | None = None,
    fixed: np.ndarray[Any, Any] | None = None,
) -> ConceptArtifact:
    """Extract and calibrate ``pairs``' concept at ``layers`` (all by default) of ``site`` in ``model``.

    With ``fixed`` (unit directions ``[len(layers), H]``, e.g. an imported vector) nothing is extracted:
    those directions are calibrated on ``pairs`` exactly as an extracted one would be (method ``fixed``).

    ``model`` is an nnsight ``TransformersModel`` with a tokenizer; ``batch_size`` counts sequences per
    forward pass (each pair is two).  Every sequence is forwarded once when the dataset has a ``test`` split
    (twice for the train split otherwise).  See the module docstring for token selection, methods and passes.

    ``remote``: ``True`` runs every forward pass on NDIF (host from ``NDIF_HOST`` or nnsight's config, key from
    ``NDIF_API_KEY`` or nnsight's config), a URL on that server: one request per batch, and only the reduced
    per-batch results come back.  ``timeout`` bounds the wait for each request (seconds).  ``progress`` shows
    a progress bar.
    """
    from tqdm.auto import tqdm

    model = _unwrap(model)
    if method not in METHODS:
        raise UserError("--method", f"unknown method '{method}'", f"methods are: {', '.join(METHODS)}")
    if site not in SITES:
        raise UserError("--site", f"unknown site '{site}'", f"sites are: {', '.join(SITES)}")
    if batch_size < 1:
        raise UserError("--batch-size", "batch size must be at least 1")
    chosen = resolve_layers(model, layers)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UserError("--model", "the model has no tokenizer")
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0))
    items = encode_pairs(tokenizer, pairs)
    train = [item for item in items if item.split == "train"]
    test = [item for item in items if item.split == "test"]

    paths = [_site_path(model, layer, site) for layer in chosen]
    device = _device(model)

    def forward(split: list[EncodedItem], label: str, sink: _TrainSums | _Projections) -> None:
        batches = list(_batches(split, batch_size))
        for batch in tqdm(batches, desc=f"{pairs.concept}: {label}", disable=not progress, leave=False):
            backend = run_backend(model, [None], remote, timeout=timeout)  # one request per batch
            sink.add(batch, _run(model, paths, batch, pad_id, sink.job(batch, device), backend))

    with torch.no_grad():
        # With a test split the train variance comes exactly from the H x H sums; without one the second pass
        # over train projects every token anyway, so the sums would be wasted work.  Remote, an H x H sum per
        # layer would travel back with every batch (43 GB for 80 layers of 8,192), so the train tokens are
        # projected in a pass of their own instead: a few floats per token.
        sums = _TrainSums(
            len(chosen),
            pca=method == "pca" and fixed is None,
            second_moment=bool(test) and not remote,
            local=not remote,
        )
        forward(train, "train" if test else "train, pass 1/2", sums)
        if fixed is not None:
            directions = torch.as_tensor(np.asarray(fixed, dtype=np.float64), device=device)
        else:
            directions = _directions(sums, method, pairs)
        projections = _Projections(directions, test or train)
        forward(test or train, "test (held out)" if test else "train, pass 2/2 (percentiles)", projections)
        train_stats = {k: v.cpu().numpy() for k, v in sums.projection_stats(directions).items()}
        if test and "std" not in train_stats:
            spread = _Projections(directions, train)
            forward(train, "train, spread", spread)
            train_stats["std"] = spread.tokens.std(axis=1)

    calibrated = projections.tokens  # [L, N]: the test split's tokens, or the train split's
    std = train_stats["std"] if test else calibrated.std(axis=1)
    held_out = projections.example_auroc() if test else np.full(len(chosen), np.nan)
    calibration = Calibration(
        pos_mean=train_stats["pos_mean"].astype(np.float32),
        neg_mean=train_stats["neg_mean"].astype(np.float32),
        scale=(train_stats["pos_mean"] - train_stats["neg_mean"]).astype(np.float32),
        mean=train_stats["mean"].astype(np.float32),
        std=np.asarray(std, dtype=np.float32),
        percentiles=np.percentile(calibrated, PERCENTILE_LEVELS, axis=1).T.astype(np.float32),
        auroc=np.asarray(held_out, dtype=np.float32),
    )
    metadata = {
        "format": FORMAT_VERSION,
        "concept": pairs.concept,
        "description": pairs.description,
        "positive": pairs.positive_label,
        "negative": pairs.negative_label,
        **_identity_metadata(model),
        "site": site,
        "method": "fixed" if fixed is not None else method,
        "layers": json.dumps(chosen),
        "dataset_sha256": pairs.sha256,
        "train_pairs": str(len(pairs.train)),
        "test_pairs": str(len(pairs.test)),
        "train_tokens": json.dumps({"positive": sums.count[1], "negative": sums.count[-1]}),
        "token_selection": token_selection(pairs.is_chat, pairs.read),
        "read": pairs.read,
        "weighting": "token"
        if method == "mean" or fixed is not None
        else "example (paired differences of per-example means)",
        "percentile_levels": json.dumps(list(PERCENTILE_LEVELS)),
        "calibration_split": "test" if test else "train",
        "tool_version": tool_version(),
    }
    return ConceptArtifact(
        directions=directions.cpu().numpy().astype(np.float32),
        layers=tuple(chosen),
        calibration=calibration,
        metadata=metadata,
    )
