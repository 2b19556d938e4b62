"""``lmms-eval --model mech``: a mech model, with or without an intervention, as an
lmms-eval 0.7.3 model.

It is a chat model (``is_simple = False``), like lmms-eval's default ``llava_hf``: the
task hands over each document's messages (the task's ``doc_to_visual`` image and
``doc_to_text`` text in one user turn). Requests are batched as ``llava_hf`` orders them
(grouped by generation arguments, documents in order within a group), ``batch_size`` at a
time; the task's ``max_new_tokens`` caps generation (1024 when it sets none, as in
``llava_hf``) and its ``until`` strings are dropped, never cut at, as ``llava_hf`` does.
mech builds the prompt with the model's template, generates under the intervention and
decodes (`mech.lmms.generate`), so predictions are those of `mech.run`.

Bad ``--model_args`` stop before any weights load: on lmms-eval's command line with one
line and exit code 2 (its own handler would print a traceback and exit 0), from Python
as `ModelArgsError`.
"""

from __future__ import annotations

import os
import sys

from .. import model as model_mod
from .generate import answers
from .options import ModelArgsError, check, check_layers, parse

try:
    from lmms_eval.api.model import lmms
except ImportError:  # lmms-eval not installed: nothing will instantiate this class
    lmms = object

__all__ = ["Mech", "ModelArgsError"]

LLAVA_HF_MAX_NEW_TOKENS = 1024  # llava_hf's cap when a task sets none


class Mech(lmms):
    """lmms-eval's ``mech`` model (see the module docstring); keyword arguments are
    ``--model_args`` (`mech.lmms.options`) plus lmms-eval's ``batch_size`` and ``device``."""

    is_simple = False

    def __init__(self, **kwargs) -> None:
        super().__init__()
        try:
            self.options = options = parse(kwargs)
            self.model = _load(options)
        except ModelArgsError as error:
            _fail(error)
        self.batch_size_per_gpu = options.batch_size
        self._device = self.model.device
        self.chat_template = self.model.template

    # -- what the evaluator reads --------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    @property
    def interventions(self) -> list:
        return self.options.interventions

    # -- requests ------------------------------------------------------------------

    def generate_until(self, requests) -> list:
        from lmms_eval import utils
        from lmms_eval.api.instance import GenerationResult, TokenCounts
        from tqdm import tqdm

        # llava_hf's order: grouped by generation arguments, documents in order in a group
        collator = utils.Collator([r.args for r in requests], lambda x: (x[2], x[2]), group_fn=lambda x: x[2],
                                  grouping=True)
        results = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="Model Responding")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            _, to_messages, all_gen_kwargs, doc_ids, tasks, splits = zip(*chunk)
            turns = [_one_turn(fn(self.task_dict[task][split][doc]), task, doc)
                     for fn, doc, task, split in zip(to_messages, doc_ids, tasks, splits)]
            cap = _max_new_tokens(dict(all_gen_kwargs[0]), tasks[0])
            texts, images = zip(*turns)
            for (text, n), prompt in zip(answers(self.model, self.interventions, texts, images, cap), texts):
                results.append(GenerationResult(text=text, token_counts=TokenCounts(output_tokens=n)))
                self.cache_hook.add_partial("generate_until", (prompt, all_gen_kwargs[0]), text)
            bar.update(len(chunk))
        bar.close()
        return collator.get_original(results)

    def loglikelihood(self, requests):
        raise NotImplementedError("mech's lmms-eval model generates answers; loglikelihood (multiple-choice "
                                  "scoring) tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("mech's lmms-eval model answers one image and one question per document; "
                                  "multi-round tasks are not supported")


def _load(options):
    """`mech.load` the model after checking the intervention against the checkpoint's
    config (no weights read yet); a random model is checked once built."""
    load = dict(options.load)
    name = load.pop("pretrained")
    if options.device is not None:
        load["device_map"] = options.device
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one model per rank, on its own GPU
        load["device_map"] = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    if load.get("dtype") == "auto":
        load.pop("dtype")
    if not name.startswith(model_mod.RANDOM):
        check_layers(options, _n_layers(name, load.get("revision")), load.get("attn_implementation", "sdpa"))
    try:
        model = model_mod.load(name, **load)
    except (ValueError, OSError) as error:
        raise ModelArgsError(f"pretrained={name}: {error}") from None
    check(options, model)
    return model


def _n_layers(name: str, revision: str | None) -> int:
    """Decoder layers of checkpoint ``name`` from its config alone; mech's own sentence
    for a folder or hub id that is missing or not a supported family."""
    from transformers import AutoConfig

    try:
        target, _ = model_mod.resolve_source(name, revision)
        config = AutoConfig.from_pretrained(target, **({} if revision is None else {"revision": revision}))
    except (ValueError, OSError) as error:
        raise ModelArgsError(f"pretrained={name}: {error}") from None
    return config.text_config.num_hidden_layers


def _one_turn(messages, task: str, doc: int):
    """``(text, image)`` of a document's messages: one user turn of one image and text."""
    from lmms_eval.protocol import ChatMessages
    from PIL import Image

    chat = ChatMessages(messages=messages)
    turns = chat.messages
    images, videos, audios = chat.extract_media()
    texts = [c.text for turn in turns for c in turn.content if c.type == "text"]
    if len(turns) != 1 or turns[0].role != "user" or len(images) != 1 or videos or audios or len(texts) != 1:
        roles = "+".join(t.role for t in turns)
        raise ValueError(f"task {task}, document {doc}: mech answers one user turn of one image and one text; "
                         f"this one has turns {roles}, {len(images)} images, {len(videos)} videos, "
                         f"{len(audios)} audio clips and {len(texts)} texts")
    image = images[0]
    if isinstance(image, str):  # a path, as some tasks give
        image = Image.open(image).convert("RGB")
    return texts[0], image


def _max_new_tokens(gen_kwargs: dict, task: str) -> int:
    """The cap of a task's generation arguments, as llava_hf reads them; mech decodes
    greedily only, so sampling or beam search is refused rather than ignored."""
    gen_kwargs.pop("until", None)  # llava_hf drops the stop strings: output is never cut at them
    if float(gen_kwargs.get("temperature", 0) or 0) > 0 or int(gen_kwargs.get("num_beams", 1) or 1) > 1:
        raise ValueError(f"task {task} asks for temperature={gen_kwargs.get('temperature')}, num_beams="
                         f"{gen_kwargs.get('num_beams')}: mech decodes greedily (temperature 0, one beam)")
    cap = gen_kwargs.get("max_new_tokens", LLAVA_HF_MAX_NEW_TOKENS)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"task {task}: max_new_tokens={cap!r} must be an integer >= 1")
    return cap


def _fail(error: ModelArgsError):
    """On lmms-eval's command line, one line and exit code 2 (its handler catches every
    Exception, prints the traceback and exits 0); from Python, the error itself."""
    if _on_command_line():
        print(f"lmms-eval --model mech: error: {error}", file=sys.stderr)
        raise SystemExit(2)
    raise error


def _on_command_line() -> bool:
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "cli_evaluate" and frame.f_globals.get("__name__", "").startswith("lmms_eval"):
            return True
        frame = frame.f_back
    return False
