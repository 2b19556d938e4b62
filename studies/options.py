"""The options of the contrastive studies, one name one meaning in every study.

Every contrastive study takes ``--review``, ``--post``, ``--fusion``, ``--rho``, ``--lam``,
``--mask-at``, ``--candidates`` and ``--heads``, with the same help and the same checks.
A study that spans a grid names the options that take comma lists (``grid=``); in the
others a list is refused with a pointer to the study that spans it. Defaults are shown by
argparse itself (``%(default)s``), so ``--help`` cannot drift from what runs.

After the checks (before any model work) each option holds its value: a tuple for a grid
option, one value otherwise (``args.rho`` is ``0.2``, or ``(0.2, 0.5)`` in a grid).
"""

from __future__ import annotations

from . import cli

CANDIDATES = ("fusion", "all", "shallow", "deep")
HEADS = ("mean", "max")

# option -> (dest, help); "%(default)s" is filled in by argparse
HELP = {
    "--review": ("review", "review layer (0-based decoder layer); default: discovered from the layer-masking "
                           "sweep, or the paper's relative depth when none is found"),
    "--post": ("post", "post-integrated layer (0-based); default: the layer before the review layer"),
    "--fusion": ("fusion", "comma-separated fusion layers S; default: discovered from the layer-masking sweep"),
    "--rho": ("rho", "mask ratio in [0, 1]: the quantile of contrastive scores below which image tokens are "
                     "scaled (the paper's best is 0.2) (default: %(default)s)"),
    "--lam": ("lam", "scale >= 0 for the masked image tokens: 0 removes them, 1 leaves them (the paper does not "
                     "publish it) (default: %(default)s)"),
    "--mask-at": ("mask_at", "where the mask acts: input (the residual stream entering the review layer: the "
                             "paper's Eq. 4 read literally; RMSNorm divides the scale back out there, so only later "
                             "layers see it), normed (after the review layer's input RMSNorm: its keys and values "
                             "see it), attention (log lambda added to every query's attention logits toward the "
                             "masked tokens at the review layer and after, at every generated token) "
                             "(default: %(default)s)"),
    "--candidates": ("candidates", "candidate set for the pre-integrated layer: fusion (the fusion set S below the "
                                   "post-integrated layer; all when S has none there), all (every layer below it), "
                                   "shallow (the first half of the stack), deep (the second half) "
                                   "(default: %(default)s)"),
    "--heads": ("heads", "how the attention heads are reduced into A(i): mean or max (default: %(default)s)"),
}
GRID_NOTE = " Comma-separated values span a grid."


def add_contrastive(parser, *, grid: tuple[str, ...] = (), defaults: dict | None = None) -> None:
    """Add every contrastive option to ``parser``. ``grid``: the options (``"--rho"``, ...)
    that take comma lists in this study; ``defaults``: this study's own defaults by dest
    (e.g. ``{"candidates": "fusion"}``)."""
    import mech

    base = {"review": None, "post": None, "fusion": None, "rho": "0.2", "lam": "0.1",
            "mask_at": mech.interventions.DEFAULT_MASK_AT, "candidates": "all", "heads": "mean"}
    base.update(defaults or {})
    unknown = set(grid) - set(HELP)
    if unknown:
        raise ValueError(f"grid options {sorted(unknown)} are not contrastive options ({', '.join(HELP)})")
    for option, (dest, text) in HELP.items():
        listed = option in grid
        parser.add_argument(option, dest=dest, default=base[dest], metavar="LIST" if listed else None,
                            help=(f"comma-separated: {text}" if listed and option != "--fusion" else text))
    parser.set_defaults(grid=tuple(grid))
    renamed(parser, "--reviews", "--review")
    renamed(parser, "--ratios", "--rho")
    cli.add_check(parser, read)
    from . import layers

    cli.add_check(parser, layers.check_layers, needs_model=True)


def renamed(parser, old: str, new: str) -> None:
    """``old`` is refused with one line naming ``new`` (hidden from ``--help``)."""
    import argparse

    def refuse(args):
        value = getattr(args, "renamed_" + old[2:], None)
        if value is not None:
            raise cli.UsageError(f"{old} {value}: the option is {new} now (comma-separated where the study "
                                 f"spans a grid), e.g. {new} {value}")

    parser.add_argument(old, dest="renamed_" + old[2:], default=None, help=argparse.SUPPRESS)
    cli.add_check(parser, refuse)


def _items(option: str, text) -> list[str]:
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise cli.UsageError(f"{option} {text!r}: give a value, e.g. {option} {_EXAMPLE[option]}")
    if len(set(items)) != len(items):
        raise cli.UsageError(f"{option} {text}: a value is given twice")
    return items


_EXAMPLE = {"--review": "5", "--rho": "0.2", "--lam": "0.1", "--mask-at": "normed", "--candidates": "all",
            "--heads": "mean"}


def _layer(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise cli.UsageError(f"{option} {text}: give a decoder layer number (0-based), e.g. {option} 5") from None


def read(args) -> None:
    """Check every contrastive option and replace its text by its value (a tuple for a
    grid option); one line naming the option on bad input."""
    import mech

    grid = getattr(args, "grid", ())
    parsers = {
        "--review": lambda x: _layer("--review", x),
        "--rho": lambda x: cli.number_option("--rho", x, low=0, high=1,
                                             meaning="the quantile of contrastive scores below which tokens are scaled"),
        "--lam": lambda x: cli.number_option("--lam", x, low=0, meaning="0 removes low-score tokens, 1 leaves them"),
        "--mask-at": lambda x: _choice("--mask-at", x, mech.interventions.MASK_AT),
        "--candidates": lambda x: _choice("--candidates", x, CANDIDATES),
        "--heads": lambda x: _choice("--heads", x, HEADS),
    }
    for option, parse in parsers.items():
        dest = HELP[option][0]
        text = getattr(args, dest)
        if text is None or not isinstance(text, str):
            continue  # not given (None), or read already
        values = tuple(parse(x) for x in _items(option, text))
        if option in grid:
            setattr(args, dest, values)
        elif len(values) > 1:
            spans = "python -m studies.controls" if option != "--candidates" else "python -m studies.strategies"
            raise cli.UsageError(f"{option} {text}: this study takes one value; {spans} spans a grid of them")
        else:
            setattr(args, dest, values[0])
    if isinstance(args.post, str):
        args.post = _layer("--post", args.post)
    if args.fusion is not None and isinstance(args.fusion, str):
        args.fusion = cli.layer_list("--fusion", args.fusion)


def _choice(option: str, value: str, choices) -> str:
    if value not in choices:
        raise cli.UsageError(f"{option} {value}: use {', '.join(choices[:-1])} or {choices[-1]}")
    return value


def values(args, dest: str) -> tuple:
    """A contrastive option as a tuple (one value or a grid's list)."""
    value = getattr(args, dest)
    return value if isinstance(value, tuple) else (value,)


def candidates_for(spec: str, fusion, post: int):
    """``--candidates`` for `mech.ContrastiveMask`: ``fusion`` is the fusion layers below the
    post-integrated layer (``"all"`` when there are none), the others as given."""
    if spec != "fusion":
        return spec
    below = [layer for layer in fusion if layer < post]
    return below if below else "all"


if __name__ == "__main__":
    cli.not_a_study(__spec__.name)
