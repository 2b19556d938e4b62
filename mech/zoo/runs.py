"""What a training run's saved options say about the model, read by training and card alike.

``args`` is the ``argparse.Namespace`` of ``python -m mech.zoo.train`` (or one rebuilt from
a checkpoint's ``training_log.json``, which may predate newer options, hence the defaults).
Training imports the card and both import this module, never each other.
"""

from __future__ import annotations

from ..datasets.shapes import QUESTION_TYPES


def question_types(args) -> tuple[str, ...]:
    """The ``--types`` of a training run (saved runs before the option: the default five)."""
    return tuple(t.strip() for t in getattr(args, "types", ",".join(QUESTION_TYPES)).split(",") if t.strip())


def planted_sites(args):
    """The `mech.zoo.planted.PlantedSites` of a ``--plant`` run, None otherwise."""
    if not getattr(args, "plant", False):
        return None
    from .planted import PlantedSites

    return PlantedSites(tuple(int(x) for x in str(args.plant_fusion).split(",")), int(args.plant_review),
                        int(args.summary_tokens), int(getattr(args, "answer_tokens", 1)))


def make_planting(args, processor, model):
    """The `mech.zoo.planted.Planting` (sites, bias schedule, penalty) of a ``--plant`` run."""
    sites = planted_sites(args)
    if sites is None:
        return None
    from .planted import Planting, TokenIds

    tok = processor.tokenizer
    words = [w.strip() for w in getattr(args, "fusion_answers", "").split(",") if w.strip()]
    return Planting(sites, TokenIds.of(tok, model.config.image_token_id),
                    total_steps=args.steps + args.phase3_steps, hold=args.hold, anneal=args.anneal,
                    start=args.bias_start, weight=args.site_weight,
                    review_dropout=getattr(args, "review_dropout", 0.0),
                    fusion_answers=tuple(tok.convert_tokens_to_ids(w) for w in words))
