"""DoLa (Chuang et al., ICLR 2024: "Decoding by Contrasting Layers") for LLaVA.

At every generated token:

1. *early exit*: the next-token logits of each candidate premature layer ``j`` are the
   final norm and LM head applied to that layer's hidden state at the last position;
   the mature layer is the model's own output (after the last decoder layer);
2. the premature layer is the candidate with the largest Jensen-Shannon divergence
   between its next-token distribution and the mature one (chosen per sample);
3. *adaptive plausibility*: tokens whose mature probability is below ``relative_top``
   times the largest one get score ``-inf``;
4. the score is ``log p_mature - log p_premature`` on the plausible tokens, then the
   optional repetition penalty (transformers' rule over every token of the sequence so
   far: negative scores times the penalty, positive ones divided), and the greedy choice.

Layer indices follow DoLa and transformers' ``hidden_states``: ``j = 0`` is the
embedding output (the decoder's input), ``j >= 1`` the output of 0-based decoder layer
``j - 1``, ``j = N`` the mature layer. Buckets (transformers' ``_dola_decoding``, which
implemented the DoLa repository's choice): for ``N`` decoder layers,
``"low" = range(start, N // 2, 2)`` and ``"high" = range(N // 2, N, 2)`` (for
``N > 40``: ``range(start, 20, 2)`` and ``range(N - 20, N, 2)``), where ``start`` is 0,
except that with tied input/output embeddings the embedding output is skipped
(``start = 2`` if ``N > 2``, else 1), because the LM head of a tied embedding merely
echoes the input token. LLaVA-1.5-7B (N = 32, untied): low = 0, 2, ..., 14; high =
16, 18, ..., 30.

Differences from transformers' old implementation, on purpose: the early exit applies
the final norm before the LM head (as the DoLa paper describes; transformers applied the
head to the un-normalised hidden state), the JS divergence is the textbook one summed
over the vocabulary (transformers averaged ``KL(M || P)`` terms over the vocabulary,
and over the batch, so one premature layer served the whole batch), and the choice is
made per sample.

Implementation: a manual greedy loop with the KV cache; each step is one nnsight trace
that saves the candidate layers' last-position hidden states and the logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import nnsight
import torch

from .checks import number
from .decoding import Decoder, eos_ids

BUCKETS = ("low", "high")


def candidate_layers(layers: Any, n_layers: int, tied: bool = False) -> tuple[int, ...]:
    """Premature-layer candidates as ``hidden_states`` indices (0 = embeddings).

    ``layers``: ``"low"``, ``"high"`` or explicit indices in ``0..n_layers - 1``.
    """
    if isinstance(layers, str):
        if layers not in BUCKETS:
            raise ValueError(f"DoLa layers={layers!r}; use 'low', 'high' or a list of hidden-state indices")
        start = 0 if not tied else (2 if n_layers > 2 else 1 if n_layers == 2 else 0)
        if layers == "low":
            if start == n_layers // 2:
                return (start,)
            return tuple(range(start, n_layers // 2, 2) if n_layers <= 40 else range(start, 20, 2))
        return tuple(range(n_layers // 2, n_layers, 2) if n_layers <= 40 else range(n_layers - 20, n_layers, 2))
    chosen = tuple(sorted({int(j) for j in layers}))
    if not chosen or chosen[0] < 0 or chosen[-1] >= n_layers:
        raise ValueError(f"DoLa candidate layers {list(layers)} must be hidden-state indices in "
                         f"0..{n_layers - 1} (0 = embeddings, j = output of decoder layer j - 1)")
    return chosen


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between distributions given as log-probabilities
    over the last dim."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)

    def kl(log_a):
        return torch.where(log_a > -math.inf, log_a.exp() * (log_a - log_m), 0.0).sum(-1)

    return 0.5 * (kl(log_p) + kl(log_q))


def contrast(mature: torch.Tensor, premature: torch.Tensor, relative_top: float = 0.1):
    """DoLa scores from mature logits ``[batch, vocab]`` and candidate logits
    ``[batch, C, vocab]``. Returns ``(scores [batch, vocab], choice [batch], js [batch, C])``:
    ``choice`` indexes the candidates."""
    log_mature = mature.float().log_softmax(-1)
    log_premature = premature.float().log_softmax(-1)
    js = js_divergence(log_mature[:, None], log_premature)
    choice = js.argmax(-1)
    base = log_premature[torch.arange(len(choice)), choice]
    plausible = log_mature >= log_mature.amax(-1, keepdim=True) + math.log(relative_top)
    scores = torch.where(plausible, log_mature - base, -math.inf)
    return scores, choice, js


def repetition_penalty(scores: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, penalty: float):
    """transformers' rule on ``scores [batch, vocab]`` for tokens in ``ids`` where ``mask``."""
    vocab = scores.shape[-1]
    seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
    seen.scatter_(1, torch.where(mask.bool(), ids, vocab), True)  # padding lands in a dropped slot
    seen = seen[:, :vocab]
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


@dataclass(frozen=True)
class DolaSteps:  # a dataclass, not a NamedTuple: cloudpickle 2.1 cannot ship NamedTuples by value
    """What `decode` returns: ``new`` ``[batch, steps]`` token ids (padding after EOS),
    ``premature`` ``[batch, steps]`` chosen hidden-state index, ``js`` ``[batch, steps, C]``,
    ``scores`` ``[batch, steps, vocab]`` (after the repetition penalty), ``finished_at``
    ``[batch]`` the step of each row's EOS (``steps`` if none), ``candidates``."""

    new: torch.Tensor
    premature: torch.Tensor
    js: torch.Tensor
    scores: torch.Tensor
    finished_at: torch.Tensor
    candidates: tuple[int, ...]


@dataclass(frozen=True)
class DoLa(Decoder):
    """DoLa greedy decoding as a runner `Decoder`: ``mech.run(model, samples, decoder=mech.DoLa())``.

    ``layers``: ``"high"`` (default; DoLa recommends it for short answers), ``"low"``, or
    explicit hidden-state indices (see the module doc). ``relative_top``: plausibility
    threshold (0.1 as in DoLa). ``repetition_penalty``: 1.2 as DoLa recommends; None or
    1.0 turns it off.

    Per-sample extras: ``premature_layers`` (the chosen index per generated token, up to
    and including EOS) and ``premature_counts`` (how often each candidate was chosen, in
    the order of `candidates`).
    """

    layers: Any = "high"
    relative_top: float = 0.1
    repetition_penalty: float | None = 1.2

    def candidates(self, model) -> tuple[int, ...]:
        tied = bool(getattr(model.config.text_config, "tie_word_embeddings", False)
                    or getattr(model.config, "tie_word_embeddings", False))
        return candidate_layers(self.layers if isinstance(self.layers, str) else list(self.layers),
                                model.n_layers, tied)

    def validate(self, model) -> None:
        self.candidates(model)
        number("relative_top", self.relative_top, low=0, high=1, low_open=True,
               meaning="DoLa's plausibility threshold; 0.1 as in DoLa")
        if self.repetition_penalty is not None:
            number("repetition_penalty", self.repetition_penalty, low=0, low_open=True,
                   meaning="1 turns it off; DoLa recommends 1.2")

    def generate(self, model, batch, max_new_tokens, samples=None):
        out = decode(model, batch, self, max_new_tokens)
        extras = []
        for b in range(batch.size):
            chosen = out.premature[b, :int(out.finished_at[b]) + 1].tolist()
            extras.append({"premature_layers": chosen,
                           "premature_counts": [chosen.count(j) for j in out.candidates]})
        return out.new, extras


def decode(model, batch, dola: DoLa, max_new_tokens: int) -> DolaSteps:
    """Greedy DoLa decoding of ``batch`` (left-padded) with the KV cache."""
    from transformers import DynamicCache

    dola.validate(model)
    candidates = dola.candidates(model)
    norm, head = model.family.language_model(model.nn._module).norm, model.nn.lm_head._module
    eos = eos_ids(model)
    pad = model.processor.tokenizer.pad_token_id
    inputs = dict(batch.inputs)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    position = model.family.last_position(model, batch)
    cache = DynamicCache()
    done = torch.zeros(batch.size, dtype=torch.bool, device=ids.device)
    finished_at = torch.full((batch.size,), max_new_tokens, dtype=torch.long)
    new, premature, divergences, all_scores = [], [], [], []
    with torch.no_grad():
        for step in range(max_new_tokens):
            with model.nn.trace(**inputs, past_key_values=cache, use_cache=True):
                hidden = nnsight.save([])
                for j in candidates:  # model order: embeddings, then layer outputs
                    value = model.layers[0].input if j == 0 else model.layers[j - 1].output
                    hidden.append(value[:, -1].save())
                logits = model.logits[:, -1].save()
            early = head(norm(torch.stack(hidden, 1)))  # [batch, C, vocab]
            scores, choice, js = contrast(logits, early, dola.relative_top)
            if dola.repetition_penalty not in (None, 1.0):
                scores = repetition_penalty(scores, ids, mask, dola.repetition_penalty)
            token = scores.argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            for b in range(batch.size):
                if not done[b] and int(token[b]) in eos:
                    finished_at[b] = step
            new.append(token)
            premature.append(torch.tensor(candidates, device=choice.device)[choice])
            divergences.append(js)
            all_scores.append(scores)
            done |= torch.isin(token, torch.tensor(sorted(eos), device=token.device))
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            position = position + 1
            if bool(done.all()):
                break
            inputs = {"input_ids": token[:, None], "attention_mask": mask, "position_ids": position}
    return DolaSteps(torch.stack(new, 1), torch.stack(premature, 1), torch.stack(divergences, 1),
                     torch.stack(all_scores, 1), finished_at, candidates)
