"""Train the embedded tiny LLaVA-1.5 on synthetic shapes VQA, on CPU, from a seed.

    python -m mech.zoo.train --seed 0 --out data/tiny-llava-shapes

Phase 1 is a size curriculum (one big object -> 1-2 medium objects -> final sizes with
at most 2, 3, then 4 objects) under AdamW + cosine lr 1e-3: without it the image signal
of a small object (~3% of pixels) is too weak and the model sits at the text prior.
Phase 2 trains the final task alone with the lr raised again (5e-4 cosine), which breaks
the plateau phase 1 ends on. Each image carries several question turns, loss on answers.
An auxiliary linear probe on the projector output (image tokens ``(B, 64, 128)``) predicts
the shape and colour of the object in each patch's grid cell: this dense label (64 per
image instead of one answer word) is what makes shape recognition learnable in minutes;
without it shape stayed at chance for 1400 steps. The probe is not part of the saved model.
Writes the model + processor (``save_pretrained``), ``training_log.json``, the test
metrics and the model card.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from ..datasets.shapes import EXTRA_TYPES, QUESTION_TYPES
from .batches import Batcher, Stage
from .runs import make_planting, question_types
from .tiny import DEFAULT_DIR, build_model, tiny_processor

CURRICULUM = (  # (stage, share of phase-1 steps)
    (Stage("big-1", n_min=1, n_max=1, grid=2, r_min=9, r_max=14, jitter=3), 0.10),
    (Stage("medium-1-2", n_min=1, n_max=2, grid=4, r_min=7, r_max=8, jitter=0), 0.15),
    (Stage("final-max2", n_max=2), 0.20),
    (Stage("final-max3", n_max=3), 0.25),
    (Stage("final-max4", n_max=4), 0.30),
)
FINAL = Stage("final", n_max=4)


# ``--preset review``: the ground-truth model of data/tiny-llava-review (see its card). It
# starts from the shipped tiny model (vision tower and decoder), so it trains in well under
# the time the tiny model itself took.
PRESETS = {
    "review": dict(types="color,shape,count,spatial", plant=True, plant_fusion="1,2", plant_review=6,
                   newline_token=True, answer_tokens=3,
                   review_dropout=0.4, fusion_answers="1,2,3,4", site_weight=5.0, hold=0.4, anneal=0.3,
                   bias_start=12.0, init=DEFAULT_DIR, steps=0, phase3_steps=1200, lr3=5e-4, eval_every=100,
                   out="data/tiny-llava-review"),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m mech.zoo.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="a named design's settings as defaults (flags given still override them): "
                         "review = the ground-truth model with planted fusion and review layers")
    ap.add_argument("--seed", type=int, default=0, help="seeds weights and the training-data stream")
    ap.add_argument("--out", default=DEFAULT_DIR, help="output folder")
    ap.add_argument("--steps", type=int, default=2400, help="total optimizer steps (both phases)")
    ap.add_argument("--layers", type=int, default=8, help="decoder layers")
    ap.add_argument("--types", default=",".join(QUESTION_TYPES),
                    help=f"comma-separated question types to train on ({', '.join(QUESTION_TYPES + EXTRA_TYPES)})")
    ap.add_argument("--phase2-share", type=float, default=0.4, help="share of steps in phase 2")
    ap.add_argument("--batch-size", type=int, default=32, help="images per step")
    ap.add_argument("--turns", type=int, default=4, help="question turns per image")
    ap.add_argument("--lr", type=float, default=1e-3, help="phase-1 peak lr")
    ap.add_argument("--lr2", type=float, default=5e-4, help="phase-2 peak lr")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on 2 shared cores, 2 OpenMP threads ran 8x "
                         "slower than 1 while another process held a core)")
    ap.add_argument("--aux-weight", type=float, default=1.0,
                    help="weight of the per-patch shape/colour probe loss (0 disables it)")
    ap.add_argument("--phase3-steps", type=int, default=900,
                    help="steps of phase 3: final task, fresh AdamW, data seed+1, one existence "
                         "question per image")
    ap.add_argument("--lr3", type=float, default=3e-4, help="phase-3 peak lr")
    ap.add_argument("--phase3-from", default=None,
                    help="skip phases 1-2: load their checkpoint (an --out of this command with "
                         "--phase3-steps 0 and otherwise the same flags) and run phase 3")
    ap.add_argument("--plant", action="store_true",
                    help="plant fusion and review layers (mech.zoo.planted): text tokens may read image "
                         "keys only at --plant-fusion (first --summary-tokens tokens after the image) and "
                         "at --plant-review (the answer position); a hard mask, then an annealed logit "
                         "bias, then none, with a penalty on the attention mass left on forbidden keys")
    ap.add_argument("--plant-fusion", default="1,2", help="planted fusion layers (with --plant)")
    ap.add_argument("--plant-review", type=int, default=6, help="planted review layer (with --plant)")
    ap.add_argument("--summary-tokens", type=int, default=1,
                    help="text tokens after the image that may read it at the fusion layers (with --plant)")
    ap.add_argument("--answer-tokens", type=int, default=1, choices=(1, 2, 3),
                    help="last prompt tokens of each turn ('?', 'assistant', ':') that may read the image at "
                         "the review layer (with --plant)")
    ap.add_argument("--site-weight", type=float, default=1.0,
                    help="weight of the forbidden attention-mass penalty (with --plant)")
    ap.add_argument("--hold", type=float, default=0.5, help="share of all steps under the hard mask (with --plant)")
    ap.add_argument("--anneal", type=float, default=0.3,
                    help="share of all steps over which the logit bias falls from --bias-start to 0 (with --plant)")
    ap.add_argument("--bias-start", type=float, default=12.0, help="logit bias when the hard mask is lifted")
    ap.add_argument("--review-dropout", type=float, default=0.0,
                    help="share of training images whose image tokens are zeroed right after the last "
                         "fusion layer, with loss only on --fusion-answers (with --plant)")
    ap.add_argument("--fusion-answers", default="1,2,3,4,yes,no",
                    help="answer words the fusion summary must carry alone (with --review-dropout)")
    ap.add_argument("--newline-token", action="store_true",
                    help="tokenize the newline after <image> as a token of its own (the summary position "
                         "of a --plant run: the one text token between the image and the question)")
    ap.add_argument("--init", default=None, help="start from this checkpoint folder instead of random weights")
    ap.add_argument("--eval-every", type=int, default=200, help="steps between validation checks")
    ap.add_argument("--n-test", type=int, default=500, help="test samples for the final metrics")
    preset = ap.parse_known_args(argv)[0].preset
    if preset:
        ap.set_defaults(**PRESETS[preset])
    return ap.parse_args(argv)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def schedule(steps: int, phase2_share: float, lr: float, lr2: float):
    """Per step: (stage, lr). Phase 1 = curriculum, phase 2 = final task, lr restarted."""
    n1 = int(round(steps * (1 - phase2_share)))
    plan, bounds, acc = [], [], 0.0
    for stage, share in CURRICULUM:
        acc += share
        bounds.append((int(round(n1 * acc)), stage))
    for i in range(n1):
        stage = next(s for b, s in bounds if i < b)
        plan.append((stage, lr_at(i, n1, lr, 100)))
    for i in range(steps - n1):
        plan.append((FINAL, lr_at(i, steps - n1, lr2, 50)))
    return plan


@torch.no_grad()
def quick_accuracy(model, processor, samples, planting=None, bias: float = 0.0,
                   zero_at: int | None = None) -> dict[str, float]:
    """Argmax at the last prompt position vs the gold answer token: equal to greedy
    generation's first word because every answer is a single token. With ``planting``,
    under its site mask at logit bias ``bias`` (0: the plain checkpoint); ``zero_at``: with
    the image tokens zeroed at the input of that layer."""
    from contextlib import ExitStack

    from .planted import image_zeroed

    from .evaluate import PROMPT

    model.eval()
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=[PROMPT.format(question=s.question) for s in samples],
                       images=[s.image for s in samples], return_tensors="pt", padding=True)
    with ExitStack() as stack:
        if planting is not None and bias != 0:
            stack.enter_context(planting.training.active(model, inputs["input_ids"], bias,
                                                         valid=inputs["attention_mask"].bool()))
        if zero_at is not None:
            rows = torch.ones(len(samples), dtype=torch.bool)
            stack.enter_context(image_zeroed(model, inputs["input_ids"], rows, zero_at, model.config.image_token_id))
        pred = model(**inputs, logits_to_keep=1).logits[:, -1].argmax(-1)
    gold = [processor.tokenizer.convert_tokens_to_ids(s.answers[0]) for s in samples]
    model.train()
    hits = {}
    for s, p, g in zip(samples, pred.tolist(), gold):
        hits.setdefault(s.extras["question_type"], []).append(p == g)
    out = {t: sum(h) / len(h) for t, h in hits.items()}
    out["overall"] = sum(p == g for p, g in zip(pred.tolist(), gold)) / len(gold)
    return out


def fit(model, processor, plan, batcher, val, args, probe_seed=None, planting=None, offset: int = 0):
    """Runs ``plan`` (per step: stage, lr) with a fresh AdamW and a fresh per-patch probe.
    With ``planting`` (`mech.zoo.planted.Planting`), text -> image attention is restricted
    to its sites at the logit bias of global step ``offset + step``, and the attention mass
    left on forbidden image keys is penalised; its review ablation zeroes the image tokens
    of some images after the last fusion layer. Returns ``(log, minutes)``."""
    from contextlib import ExitStack

    from .planted import answers_only, image_zeroed

    generator = torch.Generator().manual_seed(args.seed + 7 + offset)  # which images are ablated

    if probe_seed is not None:
        torch.manual_seed(probe_seed)
    probe = torch.nn.Linear(model.config.text_config.hidden_size, 1 + 3 + 1 + 6)  # shape | colour
    captured = {}
    hook = model.model.multi_modal_projector.register_forward_hook(
        lambda m, i, o: captured.__setitem__("img", o))
    named = [*model.named_parameters(), *(("probe." + n, p) for n, p in probe.named_parameters())]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    model.train()
    log, t0, run_loss = [], time.time(), None
    for step, (stage, lr) in enumerate(plan):
        for g in opt.param_groups:
            g["lr"] = lr
        ids, labels, pixels, patch_labels = batcher.batch(stage, args.batch_size, args.turns)
        bias = planting.bias(offset + step) if planting else 0.0
        with ExitStack() as stack:
            if planting:
                stack.enter_context(planting.training.active(model, ids, bias, valid=ids != batcher.pad))
            if planting and planting.review_dropout:
                rows = planting.ablation_rows(len(ids), generator)
                stack.enter_context(image_zeroed(model, ids, rows, max(planting.sites.fusion) + 1,
                                                 model.config.image_token_id))
                labels = answers_only(labels, rows, list(planting.fusion_answers), batcher.eos)
            logits = model(input_ids=ids, pixel_values=pixels).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        aux = probe(captured.pop("img").reshape(-1, probe.in_features))  # (B*64, 11)
        aux_loss = (torch.nn.functional.cross_entropy(aux[:, :4], patch_labels[..., 0].reshape(-1))
                    + torch.nn.functional.cross_entropy(aux[:, 4:], patch_labels[..., 1].reshape(-1)))
        total = loss + args.aux_weight * aux_loss
        site = planting.training.penalty() if planting else torch.zeros(())
        total = total + (planting.weight * site if planting else 0.0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        run_loss = loss.item() if run_loss is None else 0.95 * run_loss + 0.05 * loss.item()
        run_aux = aux_loss.item() if step == 0 else 0.95 * run_aux + 0.05 * aux_loss.item()
        run_site = site.item() if step == 0 else 0.95 * run_site + 0.05 * site.item()
        last = step == len(plan) - 1
        if step % args.eval_every == 0 or last:
            acc = quick_accuracy(model, processor, val, planting, bias)
            entry = dict(step=step, minutes=(time.time() - t0) / 60, stage=stage.name, lr=lr,
                         loss=run_loss, aux_loss=run_aux, val=acc)
            if planting:  # the plain checkpoint too, what the penalty sees, and the fusion layers alone
                after = max(planting.sites.fusion) + 1
                entry.update(bias=bias, site_mass=run_site, val_plain=quick_accuracy(model, processor, val),
                             val_fusion_only=quick_accuracy(model, processor, val, zero_at=after))
            log.append(entry)
            print(f"step {step:5d}/{len(plan)} {entry['minutes']:6.1f} min  {stage.name:11s} "
                  f"lr {lr:.2e}  loss {run_loss:.3f}  aux {run_aux:.3f}  val {acc['overall']:.3f}  "
                  + " ".join(f"{k} {v:.2f}" for k, v in sorted(acc.items()) if k != "overall")
                  + (f"  bias {bias:.1f} site {run_site:.4f} plain {entry['val_plain']['overall']:.3f}  fusion-only "
                     + " ".join(f"{k} {v:.2f}" for k, v in sorted(entry["val_fusion_only"].items()))
                     if planting else ""), flush=True)
        elif step % 25 == 0:
            print(f"step {step:5d}/{len(plan)} {(time.time() - t0) / 60:6.1f} min  {stage.name:11s} "
                  f"loss {run_loss:.3f}  aux {run_aux:.3f}" + (f"  bias {bias:.1f} site {run_site:.4f}"
                                                                if planting else ""), flush=True)
    hook.remove()
    model.eval()
    return log, (time.time() - t0) / 60


def train(args) -> dict:
    """Phases 1-2 (or load them from ``--phase3-from``), then phase 3; saves to ``--out``."""
    from ..datasets import shapes

    torch.set_num_threads(args.threads)
    processor = tiny_processor(newline=getattr(args, "newline_token", False))
    model = build_model(args.seed, processor, getattr(args, "layers", 8))
    if getattr(args, "init", None):
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(args.init, local_files_only=True)
        if len(processor.tokenizer) > model.config.text_config.vocab_size:  # new tokens get the last ids
            model.resize_token_embeddings(len(processor.tokenizer))
    planting = make_planting(args, processor, model)
    if planting:
        model.set_attn_implementation("eager")  # the site penalty reads the attention weights
    types = question_types(args)
    val = shapes("validation", n=250, seed=args.seed, types=types)
    if args.phase3_from:  # the phase-1/2 checkpoint of this same command, saved earlier
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(args.phase3_from, local_files_only=True)
        saved = json.loads((Path(args.phase3_from) / "training_log.json").read_text())
        log, minutes = saved["log"], saved["train_minutes"]
    else:
        batcher = Batcher(processor.tokenizer, args.seed, model.config.image_seq_length, types=types)
        plan = schedule(args.steps, args.phase2_share, args.lr, args.lr2)
        log, minutes = fit(model, processor, plan, batcher, val, args, planting=planting)
    if args.phase3_steps:
        # fresh optimizer and data stream; one existence question per image, since a second
        # one in the same dialogue is always the opposite answer (a text shortcut)
        batcher = Batcher(processor.tokenizer, args.seed + 1, model.config.image_seq_length, max_exist=1, types=types)
        plan = [(FINAL, lr_at(i, args.phase3_steps, args.lr3, 50)) for i in range(args.phase3_steps)]
        log3, minutes3 = fit(model, processor, plan, batcher, val, args, probe_seed=args.seed + 1,
                             planting=planting, offset=args.steps)
        n = args.steps if not log else log[-1]["step"] + 1
        log = log + [{**e, "step": e["step"] + n, "minutes": e["minutes"] + minutes,
                      "stage": "phase3"} for e in log3]
        minutes += minutes3
    if planting:
        model.set_attn_implementation("sdpa")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps(
        dict(args=vars(args), command=command_line(), train_minutes=minutes, log=log), indent=1))
    return dict(model=model, processor=processor, minutes=minutes, log=log, command=command_line())


def command_line() -> list[str]:
    """The command that ran this training (for the card)."""
    import sys

    return ["python", "-m", "mech.zoo.train", *sys.argv[1:]]


def main(argv=None):
    args = parse_args(argv)
    result = train(args)
    from .card import write_card

    metrics = write_card(args, result)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
