"""Concept extraction from contrastive pairs, and calibration of the resulting directions.

Token selection (the tokens whose activations count):

- chat-shaped pairs: the assistant reply tokens only.  The prompt is rendered with the tokenizer's chat
  template (``user`` message, generation prompt) and tokenized; the completion is tokenized on its own and
  appended, exactly as generated tokens follow a prompt.  Template and prompt tokens are never counted.
- plain pairs: every token except the first of each sequence (the attention sink, whose norm dwarfs all
  others) — with a tokenizer that adds a BOS token that first token is the BOS.
- padding is never counted (batches are right-padded with an attention mask; rows never see each other).

Methods (per layer, from the ``train`` split):

- ``mean``: ``normalize(mean(positive tokens) - mean(negative tokens))``, token-weighted, so the pole distance
  ``pos_mean - neg_mean`` of the calibration equals the norm of that difference exactly;
- ``pca``: the first principal component (uncentered, i.e. top eigenvector of the second moment) of the paired
  differences of per-example mean activations, signed so the positive pole's token mean projects higher.

Two forward passes: pass 1 accumulates streaming sums (per-pole token sums; for ``pca`` an ``H x H`` second
moment of paired differences) over the train split; pass 2 projects every token of both splits on the finished
unit directions and keeps only those scalars, for calibration: token-weighted pole means, the pole distance
(the calibrated unit), the mean and std of all train projections, percentiles, and the held-out AUROC of
per-example mean projections on the test split.  Each pass stops the forward right after the deepest layer
needed.  Everything is accumulated in float64 whatever the model's dtype.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from constraintdsl.artifacts import (
    FORMAT_VERSION,
    PERCENTILE_LEVELS,
    Calibration,
    ConceptArtifact,
    tool_version,
)
from constraintdsl.errors import SpecError, UserError
from constraintdsl.pairs import PairSet
from constraintdsl.sites import SITES, as_bth, num_layers, site_module

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
]

METHODS: tuple[str, ...] = ("mean", "pca")

TOKEN_SELECTION_CHAT = (
    "chat: assistant completion tokens only (prompt and chat-template tokens excluded); padding excluded"
)
TOKEN_SELECTION_PLAIN = "plain: every token but the first of each sequence (attention sink); padding excluded"


@dataclass(frozen=True, slots=True)
class EncodedItem:
    """One tokenized completion: ``ids``, counted tokens ``ids[start:]``, its pair, pole (+1/-1) and split."""

    ids: tuple[int, ...]
    start: int
    pair: int
    pole: int
    split: str


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


def _torch_module(model: Any) -> torch.nn.Module:
    inner = getattr(model, "__dict__", {}).get("_module")
    if not isinstance(inner, torch.nn.Module):
        raise UserError("--model", f"expected an nnsight TransformersModel, got {type(model).__name__}")
    return inner


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
    """Tokenize both completions of every pair (positive first), marking which tokens are counted."""
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
            items.append(EncodedItem(tuple(int(i) for i in ids), start, index, pole, pair.split))
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
        counted[row, item.start : n] = True
    return ids, mask, counted


def _run(model: Any, layers: list[int], site: str, batch: list[EncodedItem], pad_id: int, sink: Any) -> None:
    """One forward over ``batch``; ``sink(row_index, h, counted)`` gets each needed layer's ``[B, T, H]``.

    The trace stops right after the deepest layer in ``layers`` (nothing later runs).
    """
    ids, mask, counted = _tensors(batch, pad_id)
    positions = torch.arange(ids.shape[1], dtype=torch.long).unsqueeze(0).expand_as(ids)
    device = next(_torch_module(model).parameters()).device
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": positions.to(device),
    }
    counted = counted.to(device)
    with model.trace(inputs) as tracer:
        for row, layer in enumerate(layers):
            sink(row, as_bth(site_module(model, layer, site).output), counted)
        tracer.stop()


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


class _Pass1:
    """Streaming sums for the directions: per-pole token sums, and paired-difference second moments."""

    def __init__(self, n_layers: int, pca: bool) -> None:
        self.n_layers = n_layers
        self.pca = pca
        self.sum: dict[int, torch.Tensor] = {}  # pole -> [L, H]
        self.count = {1: 0, -1: 0}
        self.second: torch.Tensor | None = None  # [L, H, H]
        self.pending: dict[int, torch.Tensor] = {}  # pair -> [L, H] per-example mean of the positive row
        self.pending_neg: dict[int, torch.Tensor] = {}
        self.n_pairs = 0
        self.batch: list[EncodedItem] = []
        self.row_means: torch.Tensor | None = None  # [B, L, H] of the current batch

    def start(self, batch: list[EncodedItem]) -> None:
        self.batch = batch
        self.row_means = None

    def __call__(self, row: int, h: torch.Tensor, counted: torch.Tensor) -> None:
        x = h.detach().to(torch.float64)
        weights = counted.to(torch.float64)  # [B, T]
        per_row = torch.einsum("bt,bth->bh", weights, x)  # [B, H] sums over counted tokens
        if not self.sum:
            hidden = x.shape[-1]
            for pole in (1, -1):
                self.sum[pole] = torch.zeros(self.n_layers, hidden, dtype=torch.float64, device=x.device)
        poles = torch.tensor([item.pole for item in self.batch], device=x.device)
        self.sum[1][row] += per_row[poles == 1].sum(0)
        self.sum[-1][row] += per_row[poles == -1].sum(0)
        if row == 0:
            for item in self.batch:
                self.count[item.pole] += len(item.ids) - item.start
        if self.pca:
            if self.row_means is None:
                self.row_means = torch.zeros(
                    len(self.batch), self.n_layers, x.shape[-1], dtype=torch.float64, device=x.device
                )
            self.row_means[:, row] = per_row / weights.sum(1, keepdim=True)

    def finish_batch(self) -> None:
        if not self.pca or self.row_means is None:
            return
        diffs: list[torch.Tensor] = []
        for i, item in enumerate(self.batch):
            mine, other = (self.pending, self.pending_neg) if item.pole == 1 else (self.pending_neg, self.pending)
            if item.pair in other:
                partner = other.pop(item.pair)
                pos, neg = (self.row_means[i], partner) if item.pole == 1 else (partner, self.row_means[i])
                diffs.append(pos - neg)
            else:
                mine[item.pair] = self.row_means[i].clone()
        if diffs:
            d = torch.stack(diffs, dim=1)  # [L, P, H]
            update = torch.einsum("lph,lpk->lhk", d, d)
            self.second = update if self.second is None else self.second + update
            self.n_pairs += len(diffs)


class _Pass2:
    """Scalar projections of counted tokens on the unit directions (no activations are kept)."""

    def __init__(self, directions: torch.Tensor) -> None:
        self.directions = directions  # [L, H] float64
        self.batch: list[EncodedItem] = []
        self.tokens: dict[tuple[str, int], list[list[np.ndarray[Any, Any]]]] = {}
        self.examples: dict[tuple[str, int], list[list[float]]] = {}
        n = directions.shape[0]
        for split in ("train", "test"):
            for pole in (1, -1):
                self.tokens[(split, pole)] = [[] for _ in range(n)]
                self.examples[(split, pole)] = [[] for _ in range(n)]

    def start(self, batch: list[EncodedItem]) -> None:
        self.batch = batch

    def __call__(self, row: int, h: torch.Tensor, counted: torch.Tensor) -> None:
        u = self.directions[row].to(h.device)
        proj = torch.einsum("bth,h->bt", h.detach().to(torch.float64), u).cpu().numpy()
        mask = counted.cpu().numpy()
        for i, item in enumerate(self.batch):
            values = proj[i][mask[i]]
            self.tokens[(item.split, item.pole)][row].append(values)
            self.examples[(item.split, item.pole)][row].append(float(values.mean()))

    def finish_batch(self) -> None:
        pass


def _tokens(p2: _Pass2, split: str, pole: int, row: int) -> np.ndarray[Any, Any]:
    chunks = p2.tokens[(split, pole)][row]
    return np.concatenate(chunks) if chunks else np.zeros(0)


# ------------------------------------------------------------------------------------------ extract


def _identity_metadata(model: Any) -> dict[str, str]:
    from constraintdsl.models import model_identity

    ident = model_identity(model)
    return {
        "model_id": str(ident.id),
        "model_revision": str(ident.revision or ""),
        "architecture": str(ident.architecture),
        "hidden_size": str(ident.hidden_size),
        "num_layers": str(ident.num_layers),
    }


def extract(
    model: Any,
    pairs: PairSet,
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid",
    method: str = "mean",
    batch_size: int = 16,
    progress: bool = True,
) -> ConceptArtifact:
    """Extract and calibrate ``pairs``' concept at ``layers`` (all by default) of ``site`` in ``model``.

    ``model`` is an nnsight ``TransformersModel`` with a tokenizer; ``batch_size`` counts sequences per
    forward pass (each pair is two).  See the module docstring for token selection, methods and passes.
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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    items = encode_pairs(tokenizer, pairs)
    train = [item for item in items if item.split == "train"]
    n_rows = len(chosen)

    with torch.no_grad():
        p1 = _Pass1(n_rows, pca=method == "pca")
        batches = list(_batches(train, batch_size))
        for batch in tqdm(batches, desc=f"{pairs.concept}: pass 1/2", disable=not progress, leave=False):
            p1.start(batch)
            _run(model, chosen, site, batch, int(pad_id), p1)
            p1.finish_batch()
        mu_pos = p1.sum[1] / p1.count[1]
        mu_neg = p1.sum[-1] / p1.count[-1]
        diff = mu_pos - mu_neg  # [L, H]
        if method == "mean":
            norms = diff.norm(dim=1, keepdim=True)
            if bool((norms < 1e-12).any()):
                raise UserError(pairs.path, "the two poles have identical mean activations; no direction")
            directions = diff / norms
        else:
            assert p1.second is not None
            _, vectors = torch.linalg.eigh(p1.second)  # ascending eigenvalues
            directions = vectors[:, :, -1]
            signs = torch.sign((directions * diff).sum(1, keepdim=True))
            directions = directions * torch.where(signs == 0, torch.ones_like(signs), signs)

        p2 = _Pass2(directions)
        batches = list(_batches(items, batch_size))
        for batch in tqdm(batches, desc=f"{pairs.concept}: pass 2/2", disable=not progress, leave=False):
            p2.start(batch)
            _run(model, chosen, site, batch, int(pad_id), p2)

    stats: dict[str, list[Any]] = {k: [] for k in ("pos_mean", "neg_mean", "mean", "std", "percentiles", "auroc")}
    for row in range(n_rows):
        pos, neg = _tokens(p2, "train", 1, row), _tokens(p2, "train", -1, row)
        both = np.concatenate([pos, neg])
        stats["pos_mean"].append(pos.mean())
        stats["neg_mean"].append(neg.mean())
        stats["mean"].append(both.mean())
        stats["std"].append(both.std())
        stats["percentiles"].append(np.percentile(both, PERCENTILE_LEVELS))
        stats["auroc"].append(auroc(np.array(p2.examples[("test", 1)][row]), np.array(p2.examples[("test", -1)][row])))
    f32 = {k: np.asarray(v, dtype=np.float32) for k, v in stats.items()}
    scale = (np.asarray(stats["pos_mean"]) - np.asarray(stats["neg_mean"])).astype(np.float32)
    calibration = Calibration(
        pos_mean=f32["pos_mean"],
        neg_mean=f32["neg_mean"],
        scale=scale,
        mean=f32["mean"],
        std=f32["std"],
        percentiles=f32["percentiles"],
        auroc=f32["auroc"],
    )
    metadata = {
        "format": FORMAT_VERSION,
        "concept": pairs.concept,
        "description": pairs.description,
        "positive": pairs.positive_label,
        "negative": pairs.negative_label,
        **_identity_metadata(model),
        "site": site,
        "method": method,
        "layers": json.dumps(chosen),
        "dataset_sha256": pairs.sha256,
        "train_pairs": str(len(pairs.train)),
        "test_pairs": str(len(pairs.test)),
        "train_tokens": json.dumps({"positive": p1.count[1], "negative": p1.count[-1]}),
        "token_selection": TOKEN_SELECTION_CHAT if pairs.is_chat else TOKEN_SELECTION_PLAIN,
        "weighting": "token" if method == "mean" else "example (paired differences of per-example means)",
        "percentile_levels": json.dumps(list(PERCENTILE_LEVELS)),
        "tool_version": tool_version(),
    }
    return ConceptArtifact(
        directions=directions.cpu().numpy().astype(np.float32),
        layers=tuple(chosen),
        calibration=calibration,
        metadata=metadata,
    )
