"""`Family`: the adapter interface, with the behaviour most families share (LLaVA's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def without_video(cls):
    """Processor class ``cls`` declaring no video processor: transformers' classes with a
    video slot type-check (and load) one, which needs torchvision, although image-only use
    never calls it. Same behaviour for images and text; ``from_pretrained`` loads the
    image processor, tokenizer and chat template only."""
    class ImagesOnly(cls):
        @classmethod
        def get_attributes(klass):
            return [a for a in super().get_attributes() if a != "video_processor"]
    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    return ImagesOnly


# Where the hook sites of a decoder layer are (`mech.interventions.read_site`; the named
# hook points of `mech.hooks` are read at them): the submodule under the layer ("": the
# layer itself), which value of it (``input``: the first argument, ``inputs``: ``(args,
# kwargs)``, ``output``), and the element of a tuple value (None: all of it).
LAYER_SITES = {
    "input": ("", "input", None),
    "normed": ("input_layernorm", "output", None),
    "attention_inputs": ("self_attn", "inputs", None),
    "attn.z": ("self_attn.o_proj", "input", None),
    "attention_weights": ("self_attn", "output", 1),
    "attn_out": ("self_attn", "output", 0),
    "mlp_out": ("mlp", "output", None),
    "output": ("", "output", None),
}


def submodule(envoy, path: str):
    """The envoy (or module) at dotted ``path`` under ``envoy`` ("" is ``envoy`` itself)."""
    for name in filter(None, path.split(".")):
        envoy = getattr(envoy, name)
    return envoy


@dataclass(frozen=True)
class Family:
    """What differs between architecture families.

    Attributes:
        name: mech's name of the family (``"qwen2-vl"``), recorded in every result.
        architecture: the Hugging Face class name.
        model_type: config.json's ``model_type`` of that class.
        hub_ids: checkpoints a user would pass to `mech.load` (README, errors).
        placeholder: what a prompt holds once per image before processing (the processor
            expands it into the image tokens; ``config.image_token_id`` marks those).
        layer_path: dotted module path of the decoder layer list.
        own_positions: the model computes its own position ids (multimodal rotary), so a
            batch carries none; otherwise they come from the attention mask (`Batch`).
        text_keys: the inputs a run that reuses the vision tower's output keeps: all but
            the pixels' (what the text positions and masks need).
        shared_rows: None if the shared-image-rows sweep applies, else why not.
        processor_class: the transformers processor class, when it has a video slot
            (`load_processor` then builds it without one); None: AutoProcessor's choice.
        final_norm, unembedding: dotted paths of the decoder's final norm and the output
            projection (`unembed`, the logit lens).
    """

    name: str
    architecture: str
    model_type: str
    hub_ids: tuple[str, ...] = ()
    placeholder: str = "<image>"
    layer_path: str = "model.language_model.layers"
    own_positions: bool = False
    text_keys: tuple[str, ...] = ("input_ids", "attention_mask")
    shared_rows: str | None = None
    processor_class: str | None = None
    final_norm: str = "model.language_model.norm"
    unembedding: str = "lm_head"

    def load_processor(self, source: str, **kwargs):
        """The processor of a checkpoint folder or hub id, or None to leave it to
        transformers (``AutoProcessor``)."""
        if self.processor_class is None:
            return None
        import transformers

        return without_video(getattr(transformers, self.processor_class)).from_pretrained(source, **kwargs)

    # -- structure ---------------------------------------------------------------

    def language_model(self, module: torch.nn.Module) -> torch.nn.Module:
        """The decoder stack (embeddings, layers, final norm, rotary) of the HF module."""
        return module.get_submodule(self.layer_path.rsplit(".", 1)[0])

    def decoder_layers(self, module: torch.nn.Module) -> torch.nn.ModuleList:
        return module.get_submodule(self.layer_path)

    def site_module(self, site: str) -> tuple[str, str, int | None]:
        """``(submodule path under a decoder layer, value, tuple element)`` of hook site
        ``site`` (`LAYER_SITES`)."""
        return LAYER_SITES[site]

    def site(self, model, layer: int, site: str) -> tuple:
        """``(envoy, value, element)`` where hook site ``site`` of decoder ``layer`` is read
        and written; ``image_embeds`` (no layer) is the decoder stack's ``inputs_embeds``
        keyword, ``[batch, seq, hidden]``, the projector's output at the image tokens."""
        if site == "image_embeds":
            return submodule(model.nn, self.layer_path.rsplit(".", 1)[0]), "inputs", "inputs_embeds"
        path, value, element = self.site_module(site)
        return submodule(model.layers[layer], path), value, element

    def unembed(self, model, hidden):
        """Inside a trace: logits ``[..., vocab]`` of residual-stream states ``[..., hidden]``
        through the model's own final norm and output projection (called ad hoc, so the
        real forward's visits to them are untouched)."""
        return submodule(model.nn, self.unembedding)(submodule(model.nn, self.final_norm)(hidden))

    def query_key(self, attention) -> tuple:
        """``(q, k)`` of a self-attention envoy as the scores use them before rotary:
        ``[batch, seq, heads * head_dim]`` and ``[batch, seq, kv_heads * head_dim]``."""
        return attention.q_proj.output, attention.k_proj.output

    # -- inputs ------------------------------------------------------------------

    def processor_images(self, images: list, prompts: list[str]) -> list:
        """``images`` as the family's processor takes them (flat: one per placeholder)."""
        return images

    def last_position(self, model, batch) -> torch.Tensor:
        """``[batch, 1]`` position id of each row's last prompt token; the k-th generated
        token of a row is at it + k (`mech.dola` passes these)."""
        return batch.inputs["position_ids"][:, -1:]

    def text_inputs(self, inputs: dict) -> dict:
        """Inputs of a run that reuses the vision tower's output (``text_keys``)."""
        return {k: v for k, v in inputs.items() if k in self.text_keys}

    def image_tokens(self, model, height: int | None, width: int | None) -> int:
        """Image tokens one ``height x width`` image becomes: counted in the processor's
        own output for one prompt, the one authority for every family."""
        if model.processor is None or height is None or width is None:
            raise ValueError(f"{self.name} image-token counts depend on the image size and need the processor: "
                             "pass height and width of a model loaded with its processor")
        from PIL import Image

        batch = model.prepare(questions=["?"], images=[Image.new("RGB", (width, height))])
        return int(batch.image_counts[0])

    # -- where image tokens sit in the image (mech.grid) ---------------------------

    def image_views(self, model, size: tuple[int, int], inputs: dict, index: int, row_images: int = 1) -> list:
        """The `mech.grid.View` list image ``index`` of a batch becomes (``size``: its
        original ``(height, width)``; ``inputs``: the processor's outputs for the batch;
        ``row_images``: how many images its prompt holds).

        LLaVA-1.5's: the processor resizes (shortest edge) and centre-crops to the tower's
        input; the tower's patches, one token each, cover the crop.
        """
        from ..grid import View, resized, resized_box

        ip, vision = model.processor.image_processor, model.config.vision_config
        h, w = size
        rh, rw = resized(ip.size, h, w) if ip.do_resize else (h, w)
        ch, cw = (ip.crop_size.height, ip.crop_size.width) if ip.do_center_crop else (rh, rw)
        side = vision.image_size // vision.patch_size
        return [View("image", side, side, resized_box(((rh - ch) // 2, (rw - cw) // 2), (rh / h, rw / w), (ch, cw)))]
