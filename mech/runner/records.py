"""From new token ids to records: each row cut at its cap and EOS, decoded, scored under
every protocol; and the interventions' per-sample results split into each record's extras."""

from __future__ import annotations

import torch

from .. import metrics
from ..decoding import count_new_tokens, eos_ids
from ..results import Record


# What a prediction is, recorded in every chunk fingerprint (chunks of the earlier
# first-line rule are therefore recomputed, not mixed in).
OUTPUT = "whole continuation, special tokens skipped, stripped"

# Result keys in the batch's padded image-token layout ([batch, ..., n_image]): trimmed
# to each sample's own image-token count so records do not depend on batch-mates.
# None means every key. Unknown interventions: last dim == n_image is taken as this layout.
PER_IMAGE = {"ContrastiveMask": {"scores", "weights"}, "CaptureImageAttention": None}
# Results that are the same for every sample (not along the batch dim) are not extras.
RUN_CONSTANTS = {"ContrastiveMask": {"candidates"}}
# A result that holds this key ([batch]: the generation steps each row took part in) has
# every other value along dim 1 per step ([batch, step, ...]): each sample's extras keep
# its own steps only (`CaptureImageAttention(query="generated")`).
STEPS = "steps"


def score_prediction(sample, prediction: str, protocol: str) -> tuple[dict[str, float], float | None]:
    """``({protocol: score}, score under protocol)``; empty and None without answers."""
    if not len(sample.answers):
        return {}, None
    scores = {p: metrics.score(sample.dataset, prediction, sample.answers, protocol=p) for p in metrics.PROTOCOLS}
    return scores, scores[protocol]


def build_records(model, samples, new, seconds, per_sample, caps, protocol, timing=None) -> list[Record]:
    """One `Record` per sample from the new token ids ``[batch, new]``, each row cut at its
    dataset's cap (``caps``); ``seconds`` is the batch's time."""
    new = new.cpu()
    counts = count_new_tokens(new, eos_ids(model))
    tokenizer = model.processor.tokenizer
    n = len(samples)
    records = []
    for i, sample in enumerate(samples):
        count = min(counts[i], caps[sample.dataset])
        text = tokenizer.decode(new[i, :count], skip_special_tokens=True).strip()
        scores, score = score_prediction(sample, text, protocol)
        records.append(Record(id=sample.id, dataset=sample.dataset, prediction=text, score=score,
                              seconds=seconds / n, new_tokens=count,
                              timing=timing or ("per-sample" if n == 1 else "amortised"), batch_size=n,
                              extras=per_sample[i], scores=scores, question_type=sample.question_type))
    return records


def split_results(interventions, results, batch, keep) -> list[dict]:
    """Per-sample extras from ``mech.apply``'s results: tensors along the batch dim, as
    plain Python values; per-image-token ones trimmed to the sample's own tokens, per-step
    ones (a result with `STEPS`) to the sample's own steps: a list per step."""
    rows = [dict() for _ in range(batch.size)]
    if not interventions or keep is False:
        return rows
    results = [results] if len(interventions) == 1 else list(results)
    names = [type(iv).__name__ for iv in interventions]
    counts = batch.image_counts.tolist()
    n_image = batch.image_index.shape[1]
    for i, (name, result) in enumerate(zip(names, results)):
        prefix = "" if len(names) == 1 else (f"{name}." if names.count(name) == 1 else f"{name}[{i}].")
        per_image = PER_IMAGE.get(name, ...)
        steps = result.get(STEPS)
        for key, value in result.items():
            label = prefix + (f"layer{key}" if isinstance(key, int) else str(key))
            if key in RUN_CONSTANTS.get(name, ()) or (keep is not True and label not in keep):
                continue
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch.size:
                continue
            value = value.detach().cpu()
            per_step = steps is not None and key != STEPS
            if key == STEPS:
                trim = False
            elif per_image is ...:
                trim = value.dim() >= 2 + per_step and value.shape[-1] == n_image
            else:
                trim = per_image is None or key in per_image
            for b in range(batch.size):
                row = value[b, :int(steps[b])] if per_step else value[b]
                rows[b][label] = (row[..., :counts[b]] if trim else row).tolist()
    return rows
