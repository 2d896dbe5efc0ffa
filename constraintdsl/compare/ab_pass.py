"""The A/B pass of a comparison: every item's two answers, teacher-forced under the baseline and every arm, in
passes of bounded size; per-item probabilities of the matching answer, per-arm paired statistics, and the
saturation warning.

Scoring (``score``):

- ``mean`` (the default): an answer's log-probability is the **mean** log-probability of its scored tokens,
  so two answers of different lengths compete on how likely each token is, not on how many tokens they have;
- ``sum``: the total log-probability of its scored tokens (the answer's probability as a whole text).

Then ``p(match) = exp(s_match) / (exp(s_a) + exp(s_b))`` for each item.  The scored tokens are the whole answer
(``format: text``) or, in the letter form, the letter: the reply ``(A`` / ``(B`` is teacher-forced and the tokens
after the two replies' common token prefix (``A`` / ``B`` after ``(``) are scored.

Memory: the output embedding runs only on each row's last ``longest answer + 1`` positions (its input is cut
inside the trace, :func:`constraintdsl.compare.passes.score_answers`), and items are split into passes so that the
logits of one pass (arms × rows × those positions × vocabulary) and its tokens stay within budgets; only the
per-row sums come back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from constraintdsl.errors import Diagnostic, Span, UserError

if TYPE_CHECKING:
    from .ab import ABSet

__all__ = [
    "AB_LOGIT_BUDGET",
    "AB_TOKEN_BUDGET",
    "SATURATED",
    "SCORES",
    "ABGroup",
    "ABRows",
    "ab_groups",
    "ab_passes",
    "ab_rows",
    "ab_summary",
    "answer_counts",
    "check_score",
    "fill_answers",
    "item_probabilities",
    "plan_passes",
    "run_ab",
    "saturation_warning",
]

SCORES: tuple[str, ...] = ("mean", "sum")
# logits of one A/B pass: arms × rows × kept positions × vocabulary float32s, kept under this many (256 MB)
AB_LOGIT_BUDGET = 64_000_000
# tokens of one A/B pass (arms × rows × row width): bounds the forward's activations, which on a CPU took
# 135 kB per token at their peak for SmolLM2 (4,096 tokens: 0.56 GB above the loaded model; benchmarks/ab_memory.py)
AB_TOKEN_BUDGET = 4_096
# a baseline item is saturated when p(match) is below SATURATED or above 1 - SATURATED
SATURATED = 0.05


def check_score(score: str) -> str:
    """``score`` if it is a known A/B scoring (:data:`SCORES`), else a :class:`UserError` on ``--ab-score``."""
    if score not in SCORES:
        raise UserError("--ab-score", f"unknown A/B scoring '{score}'", f"use one of: {', '.join(SCORES)}")
    return score


@dataclass(frozen=True)
class ABRows:
    """Token rows of an A/B set: item i's answer a is row 2i, answer b row 2i + 1 (unpadded).

    ``seqs``: prompt + reply token ids; ``prompt``: the prompt's length; ``scored``: how many of the row's last
    tokens are scored (the reply, or in the letter form the tokens after the replies' common prefix)."""

    seqs: tuple[tuple[int, ...], ...]
    prompt: tuple[int, ...]
    scored: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.seqs)


def _prompt_ids(tokenizer: Any, text: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        chat = [{"role": "user", "content": text}]
        rendered = str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        return [int(t) for t in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
    return [int(t) for t in tokenizer(text + "\n")["input_ids"]]


def ab_rows(tokenizer: Any, ab: ABSet) -> ABRows:
    """The rows of every item: the user turn (chat template, or the text and a newline without one) followed
    by each reply, tokenized on its own as generated tokens follow a prompt."""
    seqs: list[tuple[int, ...]] = []
    prompts: list[int] = []
    scored: list[int] = []
    for item in ab.items:
        prompt = _prompt_ids(tokenizer, item.user_text(ab.format))
        replies = [
            [int(t) for t in tokenizer(reply, add_special_tokens=False)["input_ids"]]
            for reply in item.replies(ab.format)
        ]
        common = 0
        if ab.format == "letters":
            while common < min(map(len, replies)) and replies[0][common] == replies[1][common]:
                common += 1
        for reply in replies:
            if len(reply) <= common:
                where = str(item.span) if item.span is not None else ab.path
                raise UserError(where, "an answer has no tokens of its own to score", "make the two answers differ")
            seqs.append(tuple(prompt + reply))
            prompts.append(len(prompt))
            scored.append(len(reply) - common)
    return ABRows(tuple(seqs), tuple(prompts), tuple(scored))


def _tensors(rows: ABRows, which: Sequence[int], pad: int) -> tuple[torch.Tensor, ...]:
    """Left-padded ``ids``, ``mask``, ``answer`` mask and prompt lengths of the rows ``which``."""
    width = max(len(rows.seqs[r]) for r in which)
    ids = torch.full((len(which), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    plen = torch.zeros(len(which), dtype=torch.long)
    for k, r in enumerate(which):
        seq = rows.seqs[r]
        ids[k, width - len(seq) :] = torch.tensor(seq)
        mask[k, width - len(seq) :] = 1
        answer[k, width - rows.scored[r] :] = True
        plen[k] = rows.prompt[r]
    return ids, mask, answer, plen


def plan_passes(
    rows: ABRows, arms: int, vocab: int, *, logit_budget: int = AB_LOGIT_BUDGET, token_budget: int = AB_TOKEN_BUDGET
) -> list[list[int]]:
    """Items per pass, in order: each pass takes as many whole items as keep its logits
    (``arms × rows × (longest scored + 1) × vocab``) within ``logit_budget`` and its tokens
    (``arms × rows × width``) within ``token_budget``; a pass has at least one item."""
    passes: list[list[int]] = []
    current: list[int] = []
    keep = width = 0
    for item in range(len(rows) // 2):
        own = (2 * item, 2 * item + 1)
        k = max(keep, *(rows.scored[r] + 1 for r in own))
        w = max(width, *(len(rows.seqs[r]) for r in own))
        n = 2 * (len(current) + 1)
        if current and (arms * n * k * vocab > logit_budget or arms * n * w > token_budget):
            passes.append(current)
            current, k, w = [], max(rows.scored[r] + 1 for r in own), max(len(rows.seqs[r]) for r in own)
        current.append(item)
        keep, width = k, w
    if current:
        passes.append(current)
    return passes


def _vocab(model: Any) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None) or getattr(model.tokenizer, "vocab_size", None)
    return int(size or 50_000)


def ab_passes(model: Any, ab: ABSet, arms: int) -> int:
    """How many passes :func:`run_ab` makes for ``ab`` with ``arms`` payloads (for progress totals)."""
    return len(plan_passes(ab_rows(model.tokenizer, ab), arms, _vocab(model)))


def run_ab(
    model: Any,
    payloads: Sequence[dict[str, Any] | None],
    ab: ABSet,
    *,
    remote: bool | str = False,
    tick: Callable[[str], None] | None = None,
    logit_budget: int = AB_LOGIT_BUDGET,
    token_budget: int = AB_TOKEN_BUDGET,
) -> tuple[list[torch.Tensor], torch.Tensor, int, float]:
    """Every reply's summed log-probability under every payload (None: the baseline): one ``[2 · items]``
    float64 tensor per payload (item i: a at 2i, b at 2i + 1), the scored-token counts ``[2 · items]``, the
    number of passes (one request each, remote) and their wall time."""
    from .passes import score_answers

    groups = ab_groups(model, ab, len(payloads), logit_budget=logit_budget, token_budget=token_budget)
    sums = [torch.zeros(2 * len(ab.items), dtype=torch.float64) for _ in payloads]
    seconds = 0.0
    for group in groups:
        if tick is not None:
            tick(f"A/B items {group.items[0] + 1}-{group.items[-1] + 1} of {len(ab.items)}")
        started = time.perf_counter()
        scores, _ = score_answers(
            model,
            payloads,
            group.ids,
            group.mask,
            group.answer,
            group.prompt_len,
            keep=group.keep,
            telemetry=False,
            remote=remote,
        )
        seconds += time.perf_counter() - started
        fill_answers(sums, group, [score.logprob for score in scores])
    return sums, answer_counts(model, ab), len(groups), seconds


@dataclass(frozen=True)
class ABGroup:
    """One A/B pass: its items, their rows (item i: a at 2i, b at 2i + 1) as left-padded tensors, the
    answer mask, each row's prompt length, and how many last positions keep their logits."""

    items: list[int]
    rows: list[int]
    ids: torch.Tensor
    mask: torch.Tensor
    answer: torch.Tensor
    prompt_len: torch.Tensor
    keep: int


def ab_groups(
    model: Any,
    ab: ABSet,
    payloads: int,
    *,
    logit_budget: int = AB_LOGIT_BUDGET,
    token_budget: int = AB_TOKEN_BUDGET,
) -> list[ABGroup]:
    """The passes :func:`run_ab` makes for ``ab`` with ``payloads`` arms (see :func:`plan_passes`)."""
    rows = ab_rows(model.tokenizer, ab)
    tok = model.tokenizer
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))
    groups = []
    for items in plan_passes(rows, payloads, _vocab(model), logit_budget=logit_budget, token_budget=token_budget):
        which = [r for i in items for r in (2 * i, 2 * i + 1)]
        ids, mask, answer, plen = _tensors(rows, which, pad)
        keep = max(rows.scored[r] for r in which) + 1
        groups.append(ABGroup(items, which, ids, mask, answer, plen, keep))
    return groups


def fill_answers(sums: Sequence[torch.Tensor], group: ABGroup, logprobs: Sequence[torch.Tensor]) -> None:
    """Write one pass's per-row log-probabilities (one ``[rows]`` tensor per payload) into ``sums``."""
    index = torch.tensor(group.rows)
    for total, lp in zip(sums, logprobs, strict=True):
        total[index] = lp.to(torch.float64)


def answer_counts(model: Any, ab: ABSet) -> torch.Tensor:
    """The scored-token count of every reply, ``[2 · items]`` float64 (a at even rows)."""
    return torch.tensor(ab_rows(model.tokenizer, ab).scored, dtype=torch.float64)


def item_probabilities(logprob: torch.Tensor, counts: torch.Tensor, match_a: torch.Tensor, score: str) -> torch.Tensor:
    """p(match) per item ``[items]`` float64 from the replies' summed log-probabilities and scored-token counts
    (``[2 · items]``, a at even rows): ``score`` ``mean`` divides each sum by its count first."""
    from .metrics import ab_probability

    value = logprob / counts if check_score(score) == "mean" else logprob
    return ab_probability(value[0::2], value[1::2], match_a)


def ab_summary(p: torch.Tensor, base: torch.Tensor, *, behavior: str, score: str, fmt: str) -> dict[str, Any]:
    """The A/B entry of a comparison row: mean p(match), its paired shift from the baseline's items with
    standard error and 95% interval, items up/down, saturated items, and every item's p(match)."""
    from .metrics import paired_shift

    pv = [float(x) for x in p]
    stats = paired_shift(pv, [float(x) for x in base])
    saturated = sum(1 for x in pv if x < SATURATED or x > 1 - SATURATED)
    return {
        "behavior": behavior,
        "score": score,
        "format": fmt,
        "p_match": float(p.mean()),
        "baseline": float(base.mean()),
        "shift": stats["shift"],
        "se": stats["se"],
        "ci95": stats["ci95"],
        "up": stats["up"],
        "down": stats["down"],
        "items": len(pv),
        "saturated": saturated,
        "p_items": pv,
    }


def saturation_warning(baseline_ab: dict[str, Any] | None, path: str) -> Diagnostic | None:
    """A warning located at the A/B file when most of the baseline's items are saturated (p(match) below
    0.05 or above 0.95): a shift is then mostly a count of items that flip.  None otherwise, or for a
    result recorded without per-item values."""
    if not baseline_ab or "saturated" not in baseline_ab:
        return None
    n, k = int(baseline_ab.get("items", 0)), int(baseline_ab["saturated"])
    if n == 0 or 2 * k <= n:
        return None
    score = baseline_ab.get("score", "sum")
    hint = (
        "score answers by their mean log-probability per token (--ab-score mean, the default)"
        if score == "sum"
        else "write the two answers of each item closer in wording, so the model is less certain of either"
    )
    return Diagnostic(
        Span(path, 1, 1),
        f"{k} of {n} A/B items are saturated at baseline (p(match) < {SATURATED:g} or > {1 - SATURATED:g}, "
        f"{score} scoring): a shift mostly counts items that flip, and its standard error understates that",
        hint,
        severity="warning",
    )
