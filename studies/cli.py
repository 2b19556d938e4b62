"""A study's command line: its parser (the options every study shares), parsing (and joining
torchrun ranks or a shard), the command wrapper that turns bad input, failed writes and
interruptions into one line each, and the helpers that parse list and number options.

Each study is ``python -m studies.NAME`` with the same options (``--model``,
``--datasets``, ``--limit``, ``--batch-size``, ``--max-new-tokens``, ``--protocol``,
``--out``, ``--remote``, ``--seed``, ``--import``, ``--shard``, ``--reuse-other-code``);
`studies.inputs` checks them and loads what they name, `studies.output` writes
``<out>/<name>/<config id>.nc`` and its figures, linked as ``<out>/<name>.nc``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("runs")


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser every study starts from (kept in ``CURRENT["parser"]``: what ``--help``
    shows is what the tests compare with the parsed defaults). Defaults in help texts are
    argparse's ``%(default)s``, so a study's ``set_defaults`` shows in its ``--help``."""
    p = argparse.ArgumentParser(prog=f"python -m studies.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny",
                   help="'tiny' (the embedded model, default), 'tiny-review' (the ground-truth model with planted "
                        "fusion and review layers), a local checkpoint folder, a "
                        "Hugging Face id of a supported family (llava-hf/llava-1.5-7b-hf, "
                        "Qwen/Qwen2-VL-2B-Instruct, google/gemma-3-4b-it, ...), or random:FAMILY for a "
                        "tiny random model of that family (random:qwen2-vl)")
    p.add_argument("--revision", default=None, help="hub revision to pin (with a hub id)")
    p.add_argument("--datasets", default="shapes,shapes-dots",
                   help="comma-separated: shapes (clean test scenes), shapes-dots / shapes-speckle / shapes-crowd "
                        "(the same model's out-of-distribution scenes with distractors), easyvqa, vqav2, gqa, "
                        "textvqa, okvqa, vizwiz, docvqa, or a dataset registered by an --import module "
                        "(default: %(default)s)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable), e.g. one that calls mech.datasets.register "
                        "for a dataset of your own")
    p.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                   help="read dataset NAME from PATH (its official files, a save_to_disk folder or a hub "
                        "snapshot) instead of the hub; repeatable")
    p.add_argument("--question-types", default=None, metavar="LIST",
                   help="shapes sets only: comma-separated question types to cycle through (color, shape, count, "
                        "exist, spatial, relcolor), e.g. the types a model was trained on (default: color, shape, "
                        "count, exist, spatial)")
    p.add_argument("--limit", type=int, default=200,
                   help="samples per dataset, a seeded subsample; a larger limit extends a smaller one, so "
                        "its finished chunks are reused (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="samples per generate call; 1 gives exact per-sample 1/t (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="new-token cap for every dataset (default: each dataset's lmms-eval task setting: "
                        "VQAv2, GQA, shapes 16; DocVQA 32; TextVQA, OK-VQA, VizWiz 1024, lmms-eval's "
                        "llava_hf default; generation stops at EOS before that)")
    p.add_argument("--protocol", default="lmms-eval", choices=["lmms-eval", "official"],
                   help="scoring: lmms-eval 0.7.3's task scoring (default) or each benchmark's official "
                        "scorer; predictions are shared, so switching protocol regenerates nothing")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output folder shared by all studies: {name}/<config id>.nc and figures go there "
                        f"({name}.nc links to the latest), generation chunks under chunks/, and finished chunks "
                        "are reused by every study (default: %(default)s)")
    p.add_argument("--remote", nargs="?", const="ndif", default=None, choices=["ndif", "local"],
                   help="run through nnsight's remote path: bare --remote sends every trace to NDIF "
                        "(NDIF_HOST / NDIF_API_KEY from nnsight's config; the model is loaded on the "
                        "meta device here); --remote local is nnsight's serialisation dry run")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="samples per chunk file, a multiple of --batch-size: a killed run loses at most one "
                        "chunk's work (default: the smallest multiple of the batch size >= 64)")
    p.add_argument("--seed", type=int, default=0, help="subsample and bootstrap seed (default: %(default)s)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="compute only shard I of N (chunks k with k %% N == I) and stop where the others' chunks "
                        "are needed: for SLURM arrays or machines sharing a filesystem; afterwards the command "
                        "without --shard reuses everything and writes the datasets (under torchrun the ranks "
                        "share the work by themselves)")
    p.add_argument("--reuse-other-code", action="store_true",
                   help="reuse finished chunks made by other code (another mech version or checkout, other "
                        "torch/transformers/nnsight) instead of recomputing them; the dataset lists them in "
                        "its attrs (chunks_of_other_code)")
    p.add_argument("--no-progress", action="store_true",
                   help="show no progress at all (no bars, no progress lines, no 'Loading weights' bar); results, "
                        "warnings and errors are still printed")
    CURRENT["parser"] = p
    return p


def studies() -> list[str]:
    """The study modules (``python -m studies.NAME``): those whose command is built on `parser`."""
    folder = Path(__file__).parent
    return sorted(p.stem for p in folder.glob("*.py") if re.search(r"=\s*cli\.parser\(", p.read_text()))


def not_a_study(module: str) -> None:
    """What a helper module does when run as a command: one line naming the studies, exit 2."""
    print(f"python -m {module}: error: {module} is a helper of the studies, not a study; run one of: "
          + ", ".join(f"python -m studies.{s}" for s in studies()), file=sys.stderr)
    sys.exit(2)


def one_line_warnings(prog: str) -> None:
    """Warnings (a busy machine, unstable discovered layers, a chunk recomputed) as one line
    each, ``prog: warning: ...``, not Python's two-line form with a source line."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=file or sys.stderr, flush=True)

    warnings.showwarning = show


class UsageError(Exception):
    """Bad input: the CLI prints it as one line and exits with code 2, before model work."""


CURRENT: dict[str, Any] = {}  # the running study's name and args, for the interruption message


def parse(parser: argparse.ArgumentParser, argv=None):
    """Parse ``argv`` (default: the command line) and remember it for the provenance.

    Under torchrun (``WORLD_SIZE`` > 1) this joins the process group; with ``--shard I/N``
    this process becomes one shard (`mech.parallel`). Only rank 0 prints."""
    from mech import parallel, progress, store

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    store.ACCEPTED.clear()  # this command's provenance lists the chunks of other code it reuses
    progress.set_enabled(not args.no_progress)  # --no-progress: no bar at all, transformers' included
    args.argv = argv
    args.study = parser.prog.rsplit(".", 1)[-1]
    CURRENT.update(study=args.study, args=args)
    try:
        launched = parallel.launch()  # the launcher's variables, checked before anything waits on them
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.shard is not None:
        if launched is not None:
            raise UsageError(f"--shard {args.shard}: torchrun already shares the work among its ranks; drop --shard")
        try:
            parallel.set_shard(parallel.parse_shard(args.shard))
        except ValueError as error:
            raise UsageError(f"--shard {args.shard}: {str(error).split(': ', 1)[1]}") from None
    else:
        parallel.set_shard(None)
    try:
        share = parallel.init()
    except ValueError as error:
        raise UsageError(str(error)) from None
    if share.group and not share.main:
        sys.stdout = open(os.devnull, "w")  # rank 0 speaks for the group
    return args


def cli(main) -> None:
    """Run a study's ``main`` as a command: bad input is one line and exit code 2, a write
    that fails (e.g. a full disk) one line and exit 1, Ctrl-C or SIGTERM one line saying
    what was saved and how to resume (exit 130). Anything else is a bug: its traceback stays."""
    import signal

    import mech

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    prog = f"python -m {sys.modules[main.__module__].__spec__.name}"
    one_line_warnings(prog)
    try:
        main()
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except mech.metrics.InvalidScore as error:  # a scorer's fault, before anything of it was written
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except (mech.WriteError, mech.parallel.RendezvousError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except mech.parallel.ShardDone as error:
        print(f"{prog}: {error}. When every shard is done, rerun this command for the next phase, or the "
              "command without --shard to finish: it reuses every chunk and writes the datasets.", file=sys.stderr)
        sys.exit(0)
    except KeyboardInterrupt:
        args = CURRENT.get("args")
        out = getattr(args, "out", DEFAULT_OUT)
        saved = len(mech.store.WRITTEN)
        command = f"{prog} {shlex.join(getattr(args, 'argv', []))}".strip()
        print(f"\n{prog}: interrupted; {saved} chunk file{'s' * (saved != 1)} finished and saved under {out} in "
              f"this run (and every earlier one is kept). Resume with the same command ({command}): finished "
              "chunks are reused, nothing they hold is recomputed.", file=sys.stderr)
        sys.exit(130)


# Integer options are stored in the dataset's attrs: netCDF holds 64-bit integers.
LARGEST = 2 ** 63 - 1


def positive(args, option: str, value, *, allow_none: bool = False, low: int = 1, meaning: str = "") -> None:
    """An integer option in ``low..LARGEST``, or a UsageError naming it."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= LARGEST:
        hint = f" ({meaning})" if meaning else ""
        raise UsageError(f"{option} {value}: must be an integer in {low}..{LARGEST}{hint}")


def number_option(option: str, text, **bounds) -> float:
    """A numeric option, finite and in range (see `mech.checks.number`), or a UsageError."""
    from mech.checks import number

    try:
        return number(option, text, **bounds)
    except ValueError as error:
        raise UsageError(str(error).replace(f"{option}=", f"{option} ", 1)) from None


def layer_list(option: str, text: str) -> tuple[int, ...]:
    """``"2,4,8"`` -> ``(2, 4, 8)``, or a UsageError naming the option."""
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{option} {text}: give comma-separated decoder layer numbers, e.g. 2,4,8") from None
    if not layers:
        raise UsageError(f"{option} {text!r}: give at least one layer, e.g. 2,4,8")
    return layers


def add_check(parser: argparse.ArgumentParser, check, *, needs_model: bool = False) -> None:
    """Run ``check(args)`` (or ``check(args, model)``) with the common checks, before any
    sample is loaded or generated; it raises `UsageError`."""
    key = "model_checks" if needs_model else "checks"
    parser.set_defaults(**{key: [*(parser.get_default(key) or []), check]})


def layer_option(model, option: str, value) -> int:
    try:
        return model.check_layer(value, option)
    except ValueError as error:
        raise UsageError(str(error).replace(f"{option} {value!r} is", f"{option} {value}:", 1)) from None


if __name__ == "__main__":
    not_a_study(__spec__.name)
