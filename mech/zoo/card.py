"""Model card of the tiny LLaVA: held-out metrics, training curve, how to retrain.

``python -m mech.zoo.card --out data/tiny-llava-shapes`` re-evaluates a saved checkpoint
and rewrites ``metrics.json``, ``training_curve.png`` and ``README.md`` from its
``training_log.json`` (``train`` calls ``write_card`` itself at the end).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..datasets.shapes import COLORS, QUESTION_TYPES, SHAPES
from .evaluate import accuracy_by_type, predict
from .runs import question_types

CHANCE = {"color": 1 / len(COLORS), "shape": 1 / len(SHAPES), "count": 1 / 4, "exist": 1 / 2,
          "spatial": 1 / len(SHAPES), "relcolor": 1 / len(COLORS)}
TEST_SEED = 0


def measure(model, processor, n_test: int, types=QUESTION_TYPES) -> dict:
    """Greedy-generation accuracy on ``shapes("test", n_test, seed=0)``, with and without
    the image tokens zeroed at decoder layer 0, next to the text-only prior (fitted on 5000
    training samples) and uniform chance."""
    from ..datasets import shapes

    test = shapes("test", n=n_test, seed=TEST_SEED, types=types)
    fit = shapes("train", n=5000, seed=TEST_SEED, types=types)
    table = _text_prior(fit, test)
    return dict(
        n_test=n_test, test_seed=TEST_SEED,
        accuracy=accuracy_by_type(test, predict(model, processor, test)),
        accuracy_image_zeroed=accuracy_by_type(test, predict(model, processor, test, mask_image=True)),
        text_prior=table, chance=CHANCE,
    )


def _text_prior(fit, test) -> dict[str, float]:
    """Answer each test question string with its most frequent gold answer in ``fit``."""
    from collections import Counter, defaultdict

    table = defaultdict(Counter)
    by_type = defaultdict(Counter)
    for s in fit:
        table[s.question][s.answers[0]] += 1
        by_type[s.extras["question_type"]][s.answers[0]] += 1
    preds = [(table.get(s.question) or by_type[s.extras["question_type"]]).most_common(1)[0][0]
             for s in test]
    return accuracy_by_type(test, preds)


def plot(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [e["minutes"] for e in log]
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=90)
    ax.plot(minutes, [e["loss"] for e in log], color="tab:red", label="train loss (EMA)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(minutes, [e["val"]["overall"] for e in log], color="tab:blue", label="val accuracy")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("validation accuracy (250)")
    fig.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_card(args, result) -> dict:
    model, processor, out = result["model"], result["processor"], Path(args.out)
    types = question_types(args)
    metrics = measure(model, processor, args.n_test, types)
    metrics["train_minutes"] = result["minutes"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot(result["log"], out / "training_curve.png")
    n_params = sum(p.numel() for p in model.parameters())
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    if getattr(args, "plant", False):  # the ground-truth model: its own card
        from .review_card import write_text

        text = write_text(args, result, metrics, n_params, size_mb, types, test_seed=TEST_SEED)
    else:
        text = _card_text(args, result, metrics, n_params, size_mb, types)
        text += LAYER_SECTION.format(n_test=args.n_test, table=layer_curve(out, args.n_test, types))
    (out / "README.md").write_text(text)
    return metrics


LAYER_SECTION = """
## Where the image matters: the layer curve

Test accuracy ({n_test} samples) with every image-token hidden state zeroed at the input of
one decoder layer (prefill), measured by the toolkit's own path (`mech.load`, the runner,
`mech.ZeroImage`, the official VQA metric); `python -m studies.layer_masking --limit {n_test}`
draws it with bootstrap CIs.

{table}
"""


def layer_curve(out, n_test: int, types=QUESTION_TYPES) -> str:
    """Markdown: test accuracy per question type with the image tokens zeroed at the input
    of each decoder layer, measured with mech itself (``mech.load``, the runner,
    ``mech.ZeroImage``, the VQA metric), i.e. what ``python -m studies.layer_masking`` runs."""
    from collections import defaultdict

    import mech
    from ..datasets import shapes

    model = mech.load(str(out))
    test = shapes("test", n=n_test, seed=TEST_SEED, types=types)
    named = {"none": None, **{f"zero-layer{l}": mech.ZeroImage(layer=l) for l in range(model.n_layers)}}
    runs = mech.sweep(model, test, named, fast=True, batch_size=50, max_new_tokens=3, progress=False)
    types = [*types, "overall"]
    lines = ["| image tokens zeroed at | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|"]
    for name, results in runs.items():
        hits = defaultdict(list)
        for sample, record in zip(test, results.records):
            hits[sample.extras["question_type"]].append(record.score)
            hits["overall"].append(record.score)
        label = "no masking" if name == "none" else f"input of layer {name.removeprefix('zero-layer')}"
        lines.append(f"| {label} | " + " | ".join(f"{sum(hits[t]) / len(hits[t]):.1%}" for t in types) + " |")
    return "\n".join(lines)


def _row(name, m, t):
    return (f"| {name} | {m['accuracy'][t]:.1%} | {m['accuracy_image_zeroed'][t]:.1%} | "
            f"{m['text_prior'][t]:.1%} | " + (f"{m['chance'][t]:.1%} |" if t in m["chance"] else "– |"))


def _card_text(args, result, m, n_params, size_mb, types=QUESTION_TYPES) -> str:
    from .card_text import TEMPLATE

    rows = "\n".join(_row(t, m, t) for t in types) + "\n" + _row("**overall**", m, "overall")
    log = result["log"]
    curve = "\n".join(f"| {e['step']} | {e['minutes']:.1f} | {e['stage']} | {e['loss']:.3f} | "
                      f"{e['val']['overall']:.1%} |" for e in log)
    return TEMPLATE.format(
        n_params=n_params, size_mb=size_mb, vocab_size=len(processor_vocab(result)), minutes=result["minutes"], rows=rows, curve=curve,
        n_test=m["n_test"], seed=args.seed, steps=args.steps, threads=args.threads,
        batch_size=args.batch_size, turns=args.turns, lr=args.lr, lr2=args.lr2,
        p1=1 - args.phase2_share, p2=args.phase2_share, p3=getattr(args, "phase3_steps", 0),
        lr3=getattr(args, "lr3", 0.0), aux=getattr(args, "aux_weight", 0), out=args.out,
        layers=result["model"].config.text_config.num_hidden_layers,
    )


def processor_vocab(result) -> dict:
    return result["processor"].tokenizer.get_vocab()


def main(argv=None):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    ap = argparse.ArgumentParser(prog="python -m mech.zoo.card", description="Re-evaluate and rewrite the card.")
    ap.add_argument("--out", default="data/tiny-llava-shapes")
    ns = ap.parse_args(argv)
    saved = json.loads((Path(ns.out) / "training_log.json").read_text())
    args = argparse.Namespace(**{**saved["args"], "out": ns.out})
    model = LlavaForConditionalGeneration.from_pretrained(ns.out, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(ns.out, local_files_only=True)
    print(json.dumps(write_card(args, dict(model=model, processor=processor,
                                           minutes=saved["train_minutes"], log=saved["log"],
                                           command=saved.get("command"))), indent=1))


if __name__ == "__main__":
    main()
