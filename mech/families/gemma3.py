"""Gemma 3: soft image tokens that attend to each other both ways, q/k normalised before
rotary, sliding-window layers.

The prompt's ``<start_of_image>`` becomes ``<start_of_image>``, the soft tokens
(``config.image_token_id``, the ones masked) and ``<end_of_image>``. ``token_type_ids``
make each image's tokens attend bidirectionally; the mask each layer receives carries
that (and its sliding window), and every primitive edits or reads that mask, never a
causal one of its own. The scores use ``q_norm``/``k_norm`` outputs, not the projections;
attention and MLP outputs (``attn_out``, ``mlp_out``) are those of the post-norms.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Family


@dataclass(frozen=True)
class Gemma3(Family):
    placeholder: str = "<start_of_image>"
    text_keys: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")  # the bidirectional block
    shared_rows: str | None = ("its image tokens attend to each other both ways and its layers use a sliding "
                               "window, while shared image rows are computed causally on one template row")

    def site_module(self, site):
        """Attention and MLP outputs pass through post-norms before joining the residual stream."""
        return {"attn_out": ("post_attention_layernorm", "output", None),
                "mlp_out": ("post_feedforward_layernorm", "output", None)}.get(site) or super().site_module(site)

    def query_key(self, attention):
        def flat(x):  # [batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim]
            return x.transpose(1, 2).flatten(2)
        return flat(attention.q_norm.output), flat(attention.k_norm.output)

    def processor_images(self, images, prompts):
        """Nested per prompt, as ``Gemma3Processor`` takes them."""
        nested, start = [], 0
        for prompt in prompts:
            n = prompt.count(self.placeholder)
            nested.append(list(images[start:start + n]))
            start += n
        return nested

    def image_views(self, model, size, inputs, index, row_images=1):
        """One view: the whole image resized to the tower's square, its patches average-pooled
        to ``mm_tokens_per_image`` soft tokens, row-major. Pan-and-scan crops are not mapped."""
        from ..grid import View

        if getattr(model.processor.image_processor, "do_pan_and_scan", False):
            raise ValueError("image grids do not map Gemma 3's pan-and-scan crops: prepare batches with the "
                             "image processor's do_pan_and_scan=False (its default)")
        side = int(round(model.config.mm_tokens_per_image ** 0.5))
        return [View("image", side, side, (0.0, 0.0, float(size[1]), float(size[0])))]


GEMMA3 = Gemma3("gemma3", "Gemma3ForConditionalGeneration", "gemma3",
                hub_ids=("google/gemma-3-4b-it", "google/gemma-3-12b-it"))
