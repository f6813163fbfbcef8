"""How close a converted model stays to its source: teacher-forced agreement and perplexity.

`accuracy_report` feeds one fixed text through the genapi PyTorch model (float32) and through
a converted `.tflite` (in ai-edge-litert), and compares the next-token predictions at every
position. The default text, `genapi/data/eval_prose.txt`, is prose written for this project.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources

import numpy as np


def default_text() -> str:
    """The project's evaluation text (about 600 words of plain English prose)."""
    return resources.files("genapi").joinpath("data/eval_prose.txt").read_text(encoding="utf-8")


@dataclass(frozen=True)
class AccuracyReport:
    """Figures of a converted model against its float32 source over one text."""

    tokens: int  # positions compared
    top1_agreement: float  # share of positions where both predict the same next token
    perplexity: float  # of the converted model on the text
    reference_perplexity: float  # of the source model
    max_logit_error: float  # largest |converted - source| logit over all positions

    @property
    def perplexity_increase(self) -> float:
        """Relative increase of perplexity over the source, e.g. 0.02 for 2%."""
        return self.perplexity / self.reference_perplexity - 1.0

    def __str__(self) -> str:
        return (
            f"top-1 agreement {100 * self.top1_agreement:.2f}% over {self.tokens} tokens, "
            f"perplexity {self.perplexity:.3f} vs {self.reference_perplexity:.3f} "
            f"({100 * self.perplexity_increase:+.2f}%), max logit error {self.max_logit_error:.3g}"
        )


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_logits(converted: np.ndarray, reference: np.ndarray, ids) -> AccuracyReport:
    """Report for teacher-forced logits [N, V] of both models over token ids [N].

    Row i predicts ids[i + 1]; the last row has no target and is compared for agreement and
    logit error only.
    """
    ids = np.asarray(ids)
    if converted.shape != reference.shape or converted.shape[0] != ids.shape[0]:
        raise ValueError(
            f"logits {converted.shape} and {reference.shape} do not match {ids.shape[0]} tokens"
        )
    targets = ids[1:]
    rows = np.arange(len(targets))

    def perplexity(logits: np.ndarray) -> float:
        return float(np.exp(-_log_softmax(logits[:-1])[rows, targets].mean()))

    agree = converted.argmax(-1) == reference.argmax(-1)
    return AccuracyReport(
        tokens=int(ids.shape[0]),
        top1_agreement=float(agree.mean()),
        perplexity=perplexity(converted),
        reference_perplexity=perplexity(reference),
        max_logit_error=float(np.abs(converted - reference).max()),
    )


def text_ids(tokenizer, text: str | None = None, *, limit: int | None = None) -> list[int]:
    """Token ids of `text` (default: the project's text), BOS first when the model wants one."""
    ids = tokenizer.encode(default_text() if text is None else text)
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id, *ids]
    return ids[:limit] if limit is not None else ids


def reference_logits(model, ids) -> np.ndarray:
    """Float32 logits [N, V] of a genapi PyTorch model over `ids` in one forward pass."""
    import torch

    with torch.inference_mode():
        logits, _ = model(torch.tensor([list(ids)], dtype=torch.long))
    return logits[0].float().numpy()


def accuracy_report(
    tflite_path: str | os.PathLike,
    model,
    ids,
    *,
    num_threads: int = 2,
    reference: np.ndarray | None = None,
) -> AccuracyReport:
    """Compare a converted `.tflite` with its source model, teacher-forced over `ids`.

    Args:
        tflite_path: the converted file; convert with `prefill_logits=True` to make this fast
            (otherwise every token is a decode step). Its KV cache must hold all of `ids`.
        model: the genapi PyTorch model it was converted from (float32).
        ids: token ids, e.g. from `text_ids(tokenizer)`.
        num_threads: CPU threads for LiteRT.
        reference: the model's logits over `ids`, if already computed (`reference_logits`).
    """
    from genapi.runtime import LiteRTGenerator

    if reference is None:
        reference = reference_logits(model, ids)
    converted = LiteRTGenerator(tflite_path, num_threads=num_threads).logits(ids)
    return compare_logits(converted, reference, ids)
