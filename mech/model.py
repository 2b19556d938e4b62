"""Load a vision-language model into nnsight and know its family (`mech.families`).

``mech.load`` returns a `Model`: the nnsight ``TransformersModel`` (``model.nn``), the
family adapter (decoder layers, prompt template, processor), and ``prepare`` /
``trace`` / ``generate`` that take a `Batch`, so user code reads like the forward::

    model = mech.load("tiny")
    batch = model.prepare(samples)
    with model.trace(batch):
        mech.ZeroImage(layer=3).apply(model, batch)
        logits = model.logits.save()
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from . import grid, hub, templates
from .batch import Batch
from .families import FAMILIES, MODEL_TYPES, Family, family_of, supported  # noqa: F401
from .model_files import EMBEDDED, RANDOM, check_revision, check_weights
from .positions import question_mask

# MECH_TINY_PATH points "tiny" at another checkpoint (e.g. one retrained elsewhere).
TINY_PATH = Path(os.environ.get("MECH_TINY_PATH", Path(__file__).resolve().parent.parent / "data" / "tiny-llava-shapes"))
# "tiny-review": the ground-truth tiny model with planted fusion and review layers.
TINY_REVIEW_PATH = Path(__file__).resolve().parent.parent / "data" / "tiny-llava-review"


def embedded_folder(name: str) -> Path | None:
    """The folder of shipped model ``name`` (``"tiny"``, ``"tiny-review"``), None for any other
    name; FileNotFoundError, saying how to retrain it, when the folder is missing."""
    if name not in EMBEDDED:
        return None
    where, what, command = EMBEDDED[name]
    folder = globals()[where]
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{what} is missing at {folder}; retrain it with `{command}` or check out "
                                "data/ from the repository")
    return folder

def check_config(config: dict, where: str) -> Family:
    """The family a config.json describes; ValueError unless it is a supported one."""
    architectures = config.get("architectures") or []
    for architecture in architectures:
        if architecture in FAMILIES:
            return FAMILIES[architecture]
    if config.get("model_type") in MODEL_TYPES:
        return FAMILIES[MODEL_TYPES[config["model_type"]]]
    found = f"architecture {architectures[0]}" if architectures else f"model_type {config.get('model_type')!r}"
    raise ValueError(f"unsupported {found} in {where}; mech supports {supported()}")


def _hub_config(name: str, revision: str | None) -> dict:
    """The config.json of hub model ``name`` (from the cache when the hub is off)."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub import errors

    fix = (f"pass a local copy instead: mech.load('/path/to/folder') or --model /path/to/folder (get it where "
           f"the hub is reachable, e.g. `hf download {name} --local-dir FOLDER`)")
    if constants.HF_HUB_OFFLINE:
        cached = try_to_load_from_cache(name, "config.json", revision=revision)
        if not isinstance(cached, str):
            raise OSError(f"hub access is off (HF_HUB_OFFLINE=1) and {name} is not in the local cache; {fix}")
        path = cached
    else:
        why = hub.unavailable(name, fix)
        if why:
            raise OSError(why)
        try:
            path = hf_hub_download(name, "config.json", revision=revision)
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.GatedRepoError) as error:
            raise ValueError(f"{name}: not found on the hub, or not accessible without a token "
                             f"({type(error).__name__}); check the id and revision, set HF_TOKEN, or {fix}") from None
        except errors.LocalEntryNotFoundError as error:
            raise OSError(f"{name}: could not download its config.json ({error}); {fix}") from None
        except errors.RemoteEntryNotFoundError:
            raise ValueError(f"{name}: the hub repo has no config.json; it is not a transformers model") from None
        except (OSError, errors.HfHubHTTPError) as error:
            raise OSError(f"{name}: the Hugging Face hub did not answer ({type(error).__name__}); {fix}") from None
    return json.loads(Path(path).read_text())


def resolve_source(name: str, revision: str | None = None) -> tuple[str, Family]:
    """What ``from_pretrained`` gets for ``name`` (a shipped model's name, a folder or a hub
    id), and its family, after checking, before any weights load, that it exists and holds
    a supported model."""
    folder = embedded_folder(name)
    if folder is not None:
        name, revision = str(folder), None
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{name} is a file; give the model folder (the one holding config.json)")
        config = path / "config.json"
        if not config.is_file():
            what = "the folder is empty" if not any(path.iterdir()) else "no config.json in it"
            raise FileNotFoundError(f"{name}: {what}; a model folder (save_pretrained or a hub snapshot) holds "
                                    "config.json, the weights and the processor files")
        family = check_config(json.loads(config.read_text()), name)
        check_weights(path)
        return str(path), family
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or name.endswith("/"):
        raise FileNotFoundError(f"{name}: no such folder; give a model folder or a hub id such as "
                                "llava-hf/llava-1.5-7b-hf")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise ValueError(f"{name!r} is neither a folder nor a hub id of the form org/name")
    return name, check_config(_hub_config(name, revision), name)


class Model:
    """A vision-language model traced by nnsight.

    Attributes:
        nn: the ``nnsight.TransformersModel``; ``model.nn.model.language_model.layers[i]``
            is decoder layer ``i``.
        family: its `mech.families.Family` adapter (``family.name``: ``"llava-1.5"``,
            ``"qwen2-vl"``, ...).
        prompt_template: the `mech.templates.PromptTemplate` in use (the processor's chat
            template, lmms-eval's vicuna fallback, or the one given).
        template: its exact text (Jinja source or format string), as recorded.
        processor: the Hugging Face processor (may be None for a structure-only model).
        source: what was loaded (hub id, path, "tiny" or a description).
        revision: hub revision, when one was given.
    """

    def __init__(self, nn, *, template: str | None = None, source: str = "", revision: str | None = None):
        self.nn = nn
        self.family = family_of(nn._module)
        self.config = nn._module.config
        self.processor = left_padded(getattr(nn, "processor", None))
        if self.processor is not None and hasattr(nn, "processor"):
            nn.processor, nn.tokenizer = self.processor, self.processor.tokenizer
        self.prompt_template = templates.resolve(self.processor, template, self.family.placeholder)
        self.template = self.prompt_template.text
        self.source = source
        self.revision = revision

    # -- structure -----------------------------------------------------------

    @property
    def layers(self):
        """Envoys of the decoder layers, in order."""
        envoy = self.nn
        for name in self.family.layer_path.split("."):
            envoy = getattr(envoy, name)
        return envoy

    @property
    def n_layers(self) -> int:
        return self.config.text_config.num_hidden_layers

    @property
    def layer_path(self) -> str:
        """Dotted module path of the decoder layer list."""
        return self.family.layer_path

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    @property
    def logits(self):
        """Envoy value of the output logits ``[batch, seq, vocab]`` inside a trace."""
        return self.nn.output.logits

    def check_layer(self, layer: int, what: str = "layer") -> int:
        """Return ``layer`` if it is a valid 0-based decoder layer, else raise ValueError."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(
                f"{what} {layer!r} is out of range: valid decoder layers are 0..{self.n_layers - 1} "
                f"(0-based, {self.n_layers} layers)"
            )
        return layer

    def image_tokens(self, height: int | None = None, width: int | None = None) -> int:
        """Number of image tokens one image of ``height x width`` pixels becomes.

        LLaVA-1.5 resizes every image to the tower's square input, so the size is ignored;
        the other families depend on it (tiles, dynamic resolution) and need the processor.
        """
        return self.family.image_tokens(self, height, width)

    # -- inputs --------------------------------------------------------------

    def prompt(self, question: str) -> str:
        """The full prompt around ``question``: one user turn of ``<image>`` and the text,
        through the chat template (see `mech.templates`), generation prompt added."""
        return self.prompt_template.render(self.processor, question)

    def prepare(self, samples: Sequence | None = None, *, questions: Sequence[str] | None = None,
                images: Sequence | None = None, prompts: Sequence[str] | None = None,
                question_prompt=None) -> Batch:
        """Build a left-padded `Batch`.

        Pass ``samples`` (``mech.datasets.Sample``), or ``questions`` + ``images`` (the
        template is applied), or full ``prompts`` + ``images`` (each prompt must contain
        ``<image>`` once per image). ``question_prompt(sample) -> str`` rewrites a sample's
        question first (dataset post-prompts).
        """
        if self.processor is None:
            raise ValueError("this model was loaded without a processor; pass processor= to mech.load "
                             "to build batches")
        ids = None
        if samples is not None:
            samples = list(samples)
            ids = [s.id for s in samples]
            questions = [question_prompt(s) if question_prompt else s.question for s in samples]
            images = [s.image for s in samples]
        if prompts is None:
            if questions is None:
                raise ValueError("prepare needs samples, questions + images, or prompts + images")
            prompts = [self.prompt(q) for q in questions]
        prompts = list(prompts)
        images = list(images or [])
        self._check_images(prompts, images)
        encoded = self.processor(text=prompts, images=self.family.processor_images(images, prompts),
                                 return_tensors="pt", padding=True)
        inputs = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}
        batch = Batch.from_inputs(inputs, self.image_token_id, prompts, ids,
                                  mask_positions=not self.family.own_positions)
        per_prompt = [p.count(self.family.placeholder) for p in prompts]
        starts = [sum(per_prompt[:i]) for i in range(len(prompts))]
        batch.image_sizes = [[grid.image_size(images[s + k]) for k in range(n)] for s, n in zip(starts, per_prompt)]
        batch.grids = grid.batch_grids(self, inputs, batch.image_sizes, batch.image_counts.tolist())
        if questions is not None:  # where each question's tokens are (positions="question")
            found, why = question_mask(self.processor.tokenizer, prompts, questions, batch.inputs["input_ids"])
            batch.extras.update(question=found, question_reason=why)
        return batch.to(self.device)

    def _check_images(self, prompts: list[str], images: list) -> None:
        mark = self.family.placeholder
        if not prompts:
            raise ValueError("empty batch: give at least one prompt")
        counts = [p.count(mark) for p in prompts]
        for i, (p, c) in enumerate(zip(prompts, counts)):
            if c == 0:
                raise ValueError(f"prompt {i} has no {mark} placeholder: {p!r}; put "
                                 f"{mark} where the image goes (model.prompt(question) does)")
        if sum(counts) != len(images):
            raise ValueError(f"the prompts contain {sum(counts)} {mark} placeholders but "
                             f"{len(images)} images were given; pass one image per {mark}")

    @property
    def device(self) -> torch.device:
        param = next(self.nn._module.parameters())
        return torch.device("cpu") if param.device.type == "meta" else param.device

    # -- running -------------------------------------------------------------

    def trace(self, batch: Batch, **kwargs):
        """``with model.trace(batch):`` one forward over the batch (nnsight tracer)."""
        return self.nn.trace(**batch.inputs, **kwargs)

    def generate(self, batch: Batch, max_new_tokens: int = 8, **kwargs):
        """``with model.generate(batch, max_new_tokens=...) as tr:`` greedy generation.

        Interventions in the block act on the prefill (the first forward), where the
        image tokens are, and, given ``mech.apply(..., max_new_tokens=)`` with this
        generate's, those that act on generated tokens act on every step; read ids from
        ``tr.result`` (prompt + new tokens).
        """
        if self.processor is None:
            raise ValueError("generate needs the model's processor: pass processor= to mech.load")
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", self.processor.tokenizer.pad_token_id)
        # nnsight's ``generate`` decides trace-or-call from its own caller's source; going
        # through ``trace(fn=...)`` makes our wrapper a trace context in every case.
        fn = type(self.nn).generate.__wrapped__.__get__(self.nn)
        return self.nn.trace(**batch.generate_inputs, fn=fn, max_new_tokens=max_new_tokens, **kwargs)

    def decode(self, ids: torch.Tensor, batch: Batch) -> list[str]:
        """New tokens of ``generate`` output ``[batch, seq + new]`` as stripped strings."""
        new = ids[:, batch.seq_len:]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def __repr__(self) -> str:
        return (f"mech.Model({self.source!r}, family={self.family.name}, layers={self.n_layers}, "
                f"attention={self.config._attn_implementation})")


def left_padded(processor):
    """A copy of ``processor`` whose tokenizer pads on the left (the last prompt token at
    position -1 in every row); the caller's processor and tokenizer are left as they were."""
    import copy

    if processor is None or getattr(processor.tokenizer, "padding_side", "left") == "left":
        return processor
    processor = copy.copy(processor)
    processor.tokenizer = copy.copy(processor.tokenizer)
    processor.tokenizer.padding_side = "left"
    return processor


def load(source: Any = "tiny", *, processor=None, template: str | None = None,
         revision: str | None = None, dtype: torch.dtype | str | None = None,
         attn_implementation: str | None = None, device_map: str | None = None, dispatch: bool = True,
         **kwargs) -> Model:
    """Load a vision-language model of a supported family (`mech.families`) into nnsight.

    Args:
        source: ``"tiny"`` (the embedded model in ``data/tiny-llava-shapes``),
            ``"tiny-review"`` (the ground-truth model with planted fusion and review
            layers in ``data/tiny-llava-review``), a local
            directory saved with ``save_pretrained``, a Hugging Face id
            (``"llava-hf/llava-1.5-7b-hf"``, ``"Qwen/Qwen2-VL-2B-Instruct"``: any class in
            `mech.families.FAMILIES`), ``"random:<family>"`` (a tiny random model of that
            family with its offline processor, `mech.zoo.random_vlm`), or an already-built
            module of a supported class.
        processor: the processor for an already-built module (required for ``prepare``).
        template: prompt template override: a format string with ``{question}`` and one
            image placeholder (the family's, ``<image>`` for LLaVA), or a name in `mech.templates.TEMPLATES`; default: the processor's
            chat template (lmms-eval's vicuna fallback when there is none).
        revision: hub revision to pin.
        dtype, device_map: passed to ``from_pretrained``.
        attn_implementation: ``"sdpa"`` (the default for checkpoints; attention capture
            never needs eager) or ``"eager"``; for an already-built module it is set on
            the module when given, and the module's own is kept otherwise.
        dispatch: load real weights now (``False`` keeps a meta model, enough for
            ``remote=True`` runs on NDIF).
    """
    from nnsight import TransformersModel

    if revision is not None:
        check_revision(source, revision)
    if isinstance(source, torch.nn.Module):
        family_of(source)
        if attn_implementation is not None:
            source.set_attn_implementation(attn_implementation)
        if processor is None:
            # Structure only (e.g. a meta-device 7B): layers, paths and traces of
            # ready-made inputs work; prepare and generate need a processor.
            from nnsight import NNsight

            return Model(NNsight(source), template=template, source=type(source).__name__)
        processor = left_padded(processor)
        nn = TransformersModel(source, task="image-text-to-text", processor=processor,
                               tokenizer=processor.tokenizer)
        return Model(nn, template=template, source=type(source).__name__)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"mech.load takes 'tiny', a path, a hub id or a model, not {type(source).__name__}")
    name = str(source)
    if name.startswith(RANDOM):
        from .zoo.random_vlm import FAMILY_NAMES, random_vlm

        family = name[len(RANDOM):]
        if family not in FAMILY_NAMES:
            raise ValueError(f"{name!r}: no such family; use random:<family> with one of {', '.join(FAMILY_NAMES)}")
        module, random_processor = random_vlm(family, attn=attn_implementation or "sdpa")
        model = load(module, processor=processor or random_processor, template=template)
        model.source = name
        return model
    target, family = resolve_source(name, revision)
    options = dict(kwargs, attn_implementation=attn_implementation or "sdpa")
    if revision is not None:
        options["revision"] = revision
    if dtype is not None:
        options["dtype"] = dtype
    if device_map is not None:
        options["device_map"] = device_map
    if processor is None:  # families whose processors have a video slot: built without it
        processor = family.load_processor(target, **({} if revision is None else {"revision": revision}))
    given = {} if processor is None else {"processor": processor, "tokenizer": processor.tokenizer}
    nn = TransformersModel(target, task="image-text-to-text", dispatch=dispatch, **given, **options)
    return Model(nn, template=template, source=name, revision=revision)
