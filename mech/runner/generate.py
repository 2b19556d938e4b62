"""One batch of a run: prepared, generated under the run's interventions (in one
``model.generate``, every generation step included where an intervention acts on them) or
by its decoder, timed around generate only, and turned into records."""

from __future__ import annotations

import time
import warnings

import torch

from ..interventions import apply
from ..results import Record
from .records import split_results


class ContextWarning(UserWarning):
    """A prompt plus its new tokens does not fit the model's context window."""


def warn_context(model, samples, batch, cap: int) -> None:
    limit = getattr(model.config.text_config, "max_position_embeddings", None)
    if not limit:
        return
    lengths = batch.inputs["attention_mask"].sum(-1).tolist()
    for sample, length in zip(samples, lengths):
        if length + cap > limit:
            warnings.warn(f"sample {sample.id} ({sample.dataset}): its prompt is {length} tokens and up to {cap} "
                          f"new tokens follow, beyond the model's context of {limit} positions; its answer "
                          "is unreliable (shorten the question or lower --max-new-tokens)", ContextWarning,
                          stacklevel=4)


def run_batch(model, samples, job, remote=False, decoder=None) -> list[Record]:
    batch = model.prepare(samples, question_prompt=job.question_prompt)
    interventions, cap = job.interventions, job.batch_cap(samples)
    warn_context(model, samples, batch, cap)
    results = None
    with torch.no_grad():
        start = time.perf_counter()
        if decoder is not None:
            new, decoded = decoder.generate(model, batch, cap, samples)
        else:  # one request with remote=, whatever acts on the generation steps
            options = {"remote": remote} if remote else {}
            with model.generate(batch, max_new_tokens=cap, **options) as tracer:
                if interventions:
                    results = apply(model, batch, *interventions, max_new_tokens=cap)
                ids = tracer.result.save()
            new = ids[:, batch.seq_len:]
        if new.device.type == "cuda":
            torch.cuda.synchronize(new.device)
        seconds = time.perf_counter() - start
    keep = job.keep
    if decoder is not None:
        per_sample = [{k: v for k, v in row.items() if keep is True or (keep is not False and k in keep)}
                      for row in decoded]
    else:
        per_sample = split_results(interventions, results, batch, keep)
    return job.records(samples, new, seconds, per_sample)
