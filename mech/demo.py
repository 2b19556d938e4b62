"""A two-minute tour of the primitives: ``python -m mech.demo [--model tiny]``.

Loads a model (default: the embedded tiny LLaVA; a random tiny LLaVA if it is not
there yet), then on one batch: zero-masks the image tokens at each decoder layer,
captures image attention, and runs the contrastive-attention intervention.
"""

from __future__ import annotations

import argparse

import torch

import mech
from mech.zoo.random_llava import random_images, random_llava


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mech.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny', a local path or a hub id (default: tiny)")
    parser.add_argument("--max-new-tokens", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    try:
        model = mech.load(args.model)
        samples = mech.datasets.shapes(split="test", n=4, seed=0)
        batch = model.prepare(samples)
        gold = [s.answers[0] for s in samples]
    except (FileNotFoundError, AttributeError) as missing:
        print(f"({missing}; using a random tiny LLaVA instead)")
        module, processor = random_llava()
        model = mech.load(module, processor=processor)
        questions = ["what color is the circle?", "what shape is red?", "is the square blue?"]
        batch = model.prepare(questions=questions, images=random_images(3))
        gold = ["?"] * 3
    print(model)
    print("prompt:", batch.prompts[0].replace("\n", "\\n"), "| image tokens per row:", batch.image_counts.tolist())

    def answers(*interventions):
        with torch.no_grad(), model.generate(batch, max_new_tokens=args.max_new_tokens) as tr:
            results = mech.apply(model, batch, *interventions)
            ids = tr.result.save()
        return model.decode(ids, batch), results

    print(f"{'intervention':<28} answers (gold: {gold})")
    print(f"{'none':<28} {answers()[0]}")
    for layer in range(model.n_layers):
        print(f"{f'zero image @ layer {layer} input':<28} {answers(mech.ZeroImage(layer=layer))[0]}")
    contrastive = mech.ContrastiveMask()
    predictions, result = answers(contrastive)
    review, post, _ = contrastive.layers_for(model)
    print(f"{f'contrastive (review {review})':<28} {predictions}  pre-integrated layers: "
          f"{result['pre_layer'].tolist()}")
    with torch.no_grad(), model.trace(batch):
        attention = mech.CaptureImageAttention(layers=[post]).apply(model, batch)
    top = attention[post][0].topk(3)
    print(f"layer {post} image attention of row 0: top tokens {top.indices.tolist()} "
          f"with mass {[round(v, 3) for v in top.values.tolist()]}")


if __name__ == "__main__":
    main()
