"""The model card template (filled by ``card.write_card``)."""

TEMPLATE = """\
# tiny-llava-shapes

A tiny **LLaVA-1.5** (`LlavaForConditionalGeneration`, exact Hugging Face architecture) trained
from scratch on the synthetic *shapes* VQA set (`mech.datasets.shapes`). It exists so that
the toolkit has a model whose image pathway really matters, with no download: real LLaVA
weights cannot be fetched here. Load it offline:

```python
from transformers import AutoProcessor, LlavaForConditionalGeneration
model = LlavaForConditionalGeneration.from_pretrained("data/tiny-llava-shapes")
processor = AutoProcessor.from_pretrained("data/tiny-llava-shapes")
prompt = "USER: <image>\\nwhat color is the circle? ASSISTANT:"
```

## Architecture ({n_params:,} parameters, {size_mb:.1f} MB fp32 safetensors)

| part | setting |
|---|---|
| vision tower | CLIP ViT: 64x64 image, patch 8 (8x8 = 64 patches + CLS), hidden 128, 4 layers, 4 heads, MLP 512, quick_gelu |
| feature selection | `vision_feature_layer=-2` (penultimate layer), `vision_feature_select_strategy="default"` (CLS dropped) -> 64 image tokens |
| projector | LLaVA-1.5 MLP: Linear 128->128, GELU, Linear 128->128 |
| decoder | Llama: hidden 128, {layers} layers, 4 heads, 2 KV heads (GQA), MLP 512 (SiLU-gated), RoPE, untied lm_head |
| tokenizer | word level, lower-casing, {vocab_size} tokens (specials, template words, `mech.datasets.shapes.VOCABULARY`); `<image>` expanded to 64 tokens by `LlavaProcessor` |
| image processor | `CLIPImageProcessor` (resize/crop 64, CLIP mean/std) |
| prompt | `USER: <image>\\n{{question}} ASSISTANT:` -> `{{answer}}</s>` |

## Data

`mech.datasets.shapes`: 64x64 white images, a 4x4 grid of 16-px cells holding 1-4 objects
(circle / square / triangle x red / green / blue / yellow / purple / orange, radius 5-7 px,
±1 px jitter). Five question types, each asked only when its one-word answer is unique:
`color` ("what color is the circle?"), `shape` ("what shape is red?"), `count`
("how many shapes are there?" -> 1-4), `exist` ("is there a blue square?" -> yes/no),
`spatial` ("what is left of the triangle?" -> the shape of the only object in a column
further left/right). Splits are content-disjoint: each scene is hashed into 10 buckets
(8 train, 1 validation, 1 test) and every split has its own seed stream, so no test image
ever appears in training.

## Training

`python -m mech.zoo.train` (seed {seed}, {steps} steps of {batch_size} images x {turns}
question turns in LLaVA multi-turn format, loss on answer tokens and their `</s>` only,
AdamW betas (0.9, 0.98), weight decay 0.01, grad-clip 1, torch threads {threads}):

1. **Size curriculum**, {p1:.0%} of steps, lr {lr:g} cosine (100 warm-up steps): one big object
   on a 2x2 grid (10%), 1-2 medium objects (15%), then final sizes with at most 2 (20%),
   3 (25%) and 4 (30%) objects. (In an earlier prototype, without it the model stayed at
   the text-only prior: a small object is ~3% of the pixels.)
2. **Final task** only, {p2:.0%} of steps, lr raised again to {lr2:g} (cosine, 50 warm-up steps).
3. **Phase 3**, {p3} more steps (`--phase3-steps`) of the final task with a fresh AdamW, lr {lr3:g}
   (cosine, 50 warm-up), the data stream of seed + 1, and at most one existence question
   per image: in phases 1-2 an image could carry both the "yes" and the "no" existence
   question, so the second is always the opposite of the first (a text shortcut), and
   existence stayed near chance. With seed 0, test accuracy after phase 2 was 81.8%
   (existence 48%); phase 3 raised existence to the value below. Shortcut removal and the
   extra steps are confounded: no ablation was run.

Throughout, an **auxiliary per-patch probe** (weight {aux:g}): a linear layer on the projector
output (the 64 image-token embeddings entering the decoder) predicts the shape and the colour
of the object in each patch's grid cell (or "empty"). Answer words alone are one label per
question; with them only, shape recognition stayed at chance for 1400+ steps (colour and
count were learned). The probe is discarded: the checkpoint is a plain LLaVA.

Measured training time: **{minutes:.1f} minutes** on 2 shared CPU cores (torch CPU, 1 thread),
data generation and the periodic validation included, evaluation for this card not included.
The 2 cores were shared with other heavy jobs during this run; a training step alone
benchmarked at ~0.8 s with 1 thread and ~0.5 s with 2 threads on a quiet machine, but 2
OpenMP threads become several times slower than 1 as soon as another process holds a core,
hence `--threads 1` by default.

![training curve](training_curve.png)

| step | minutes | stage | train loss (EMA) | validation accuracy (250, argmax of first token) |
|---|---|---|---|---|
{curve}

## Held-out test accuracy

`shapes(split="test", n={n_test}, seed=0, types=({types_tuple}))`, greedy `model.generate` with the processor,
batched with left padding, first decoded word == gold answer. "image zeroed": all image-token
hidden states set to 0 at the input of decoder layer 0. "text prior": each test question
answered with its most frequent answer among 5000 training samples with the same question
text (the best a model that ignores the image can do); chance: uniform over the answers of the type.

| question type | accuracy | image zeroed | text prior | chance |
|---|---|---|---|---|
{rows}

## Retrain exactly

```bash
python -m mech.zoo.train --seed {seed} --out {out} --layers {layers} --steps {steps} --phase3-steps {p3} --threads {threads}
```

(all other flags at their defaults; `--help` lists them). The shipped checkpoint was made in
two invocations of the same code path (phases 1-2 with `--phase3-steps 0 --out /tmp/run4`,
then `--phase3-from /tmp/run4 --phase3-steps {p3}`, which loads that checkpoint and runs
phase 3 exactly as the single command does after phase 2); the minutes above add both.
Phases 1-2 ran on the code just before phase 3 was factored out of `train()` into `fit()`; a full single-command retrain (`python -m mech.zoo.train --seed 0`, 45.1 min on 2 CPU cores, 1 thread) then reproduced the shipped `model.safetensors` bit for bit (same SHA-256) and the same test accuracy per question type. Same seed and thread count give
the same data stream and initial weights; floating-point summation order can still differ
across machines, so expect accuracy within ~2 points rather than bit-identical weights.
`python -m mech.zoo.card --out {out}` re-evaluates a checkpoint and rewrites this card.

`designs.md` (next to this card) holds two deeper designs tried toward a model with a
discoverable review layer (12 layers; 12 layers plus a relational colour question), with
their masking curves. Neither gets there, so neither is shipped.

## Contrastive attention on this model

`python -m studies.controls --model {out} --datasets shapes,shapes-dots,shapes-speckle,shapes-crowd
--reviews ... --rho 0.2,0.5,0.8 --lam 0.1,0 --mask-at input,normed,attention --markdown {out}/controls.md`
measures contrastive attention against its controls on this checkpoint (see the README's
"Where the mask acts, and controls"); `controls.md` holds the last such table.
"""


REVIEW_TEMPLATE = """\
# tiny-llava-review: a model whose fusion and review layers are known

A tiny **LLaVA-1.5** (`LlavaForConditionalGeneration`, the same architecture, tokenizer and
processor as `data/tiny-llava-shapes`: CLIP 4x128 tower, 64 image tokens, Llama decoder of
{n_layers} layers x 128) trained so that image information enters the text at chosen
layers and nowhere else. It is the toolkit's ground truth: `mech.discover_layers` should
recover the planted layers without being told, and the contrastive method can be judged at
a layer where the model really looks at the image again. {n_params:,} parameters,
{size_mb:.1f} MB; a plain `save_pretrained` folder, no custom class, no mask at inference:

```python
import mech
model = mech.load("tiny-review")          # or mech.load("{out}")
```

## Planted design

Text tokens may attend to image keys only at these sites: {sites}. Image tokens attend to
each other and every text token to earlier text at every layer (causal), as usual.

* **Fusion layers {fusion}**: only the first text token after the image (the question's
  first word, "what" / "how" / "is") may read the image, before the asked object is named,
  so what it carries is a question-independent summary of the scene.
* **Review layer {review}**: only the answer position (the `:` of `ASSISTANT:`, the last
  prompt token) may read the image, once the question is resolved: the second look.
* **Review ablation**: in a share {dropout:g} of training images the image tokens are zeroed
  at the input of the layer after the last fusion layer (what `mech.ZeroImage` does), and
  only the answers {fusion_answers} are trained there. Counting must therefore be
  answerable from the fusion summary alone; colour, shape and spatial questions are left
  to the review read.
* **Question types {types}**: existence questions ("is there a red circle?") are left
  out. In the two designs trained with them (below) they stayed at chance while every
  other type was learned, and the model missed the 90% held-out goal because of them.

How the sites are enforced (`mech.zoo.planted`): a per-layer 4-D additive attention mask on
the forbidden (text query, image key) pairs, hard for the first {hold:.0%} of the steps, then a
logit bias falling from {bias:g} to 0 over the next {anneal:.0%}, then no mask; throughout, the
attention mass still reaching forbidden image keys (eager attention) is penalised with
weight {weight:g}. The checkpoint's own weights keep the pattern (measured below).

## Training

```bash
{command}
```

(`--preset review` holds these settings: `python -m mech.zoo.train --preset review` trains this
model into `data/tiny-llava-review`.) Seed {seed}; {steps} steps of 32 images x 4 question turns; initial weights: {init}.
Measured training time: **{minutes:.1f} minutes** on 2 CPU cores shared with other jobs
(torch CPU, 1 thread), validation included, this card's evaluation not included.

## Held-out test accuracy

`shapes(split="test", n={n_test}, seed=0)`, greedy generation, first word == gold answer;
"image zeroed": image tokens zeroed at the input of layer 0; "text prior": the most
frequent training answer of each question text.

| question type | accuracy | image zeroed | text prior |
|---|---|---|---|
{rows}

## Where the image matters: the masking curve per question type

Image tokens zeroed at the input of each layer (prefill; `mech.sweep` of `mech.ZeroImage`,
the toolkit's own path), the same {n_test} test samples:

{curve}

## Blind recovery: what `discover_layers` finds

On the curve above (`mech.discovery.discover_layers`, default rule, 1,000 bootstrap
resamples): fusion layers **{found_fusion}**, review layer **{found_review}** (planted:
fusion {fusion}, review {review}).

{frequencies}

{reason}

How the answer depends on the number of samples (the first n of the same test set):

{by_n}

## Which planted sites the weights use: attention knockout

Zero-masking asks what is lost when the image tokens are zeroed from a layer on;
knockout asks it directly: every text token after the image is barred from the image keys
at one layer alone (`mech.Knockout(layers=[L], query="text")`), the same test samples:

{knockout}

The weights read the image into the text where knockout costs accuracy. A planted site is
where reading was *allowed*; a site whose knockout costs nothing is one the weights do not
use, and by construction no layer outside the sites reads the image. Zero-masking can flag
a layer that reads nothing: zeroing at the input of layer L also changes what the image
positions hold at every later layer (the zeros are processed by layer L onwards, where
zeroing at L+1 keeps them zero at L+1), so `drop(L)` mixes what layer L reads with how the
"no image" state looks to the layers that do read. Such a layer appears in S above with
no knockout cost beside it.

## The planted pattern in the weights

Mean attention mass on the 64 image keys (over heads and 100 test samples, eager attention,
no mask) of the summary query (the first text token after the image), the answer query
(the last prompt token) and every other text query after the image:

{attention}

## The main job on this model

`python -m studies.review_layer --model tiny-review --question-types {types} --limit 400`
(clean shapes and distractor dots, 400 samples each, of the question types the model was
trained on; at the default 200 each the review layer is found in 28% of resamples only and
the job falls back, see the table by n above):

```
{main_job}
```

## Contrastive attention against its controls

`python -m studies.controls --model tiny-review --question-types {types} --limit 400
--mask-at input,normed,attention --rho 0.2,0.5,0.8 --lam 0.1,0 --markdown controls.md` (the
discovered layers: review 6, post 5; every control scales as many tokens per sample as the
contrastive run; Δ is contrastive minus the row's system, paired bootstrap 95% CI):

{controls}

Summary (cells with a paired test p < 0.05): {tally}.

## Designs tried

Each row is one training from the shipped tiny model (8 layers, fusion 1, 2 and review 6
planted), measured on its own held-out test set as in the tables above; only the last is
kept. Below 90% is below the goal this model was built to.

| design | change | held-out accuracy | existence | discovery (review layer, its frequency) |
|---|---|---|---|---|
| 4 | all five question types | 87.2% | 46% | fusion {{2}}, review 6 (96%) |
| 5 | all five types, a variant of 4's settings (its checkpoint and flags were not kept) | 86.0% | 43% | review 6 (88%) |
| 6 (this model) | no existence questions | {overall} | – | fusion {found_fusion}, review {found_review} ({review_frequency}) |
"""
