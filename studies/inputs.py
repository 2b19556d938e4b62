"""What a study reads: its options checked (one line naming the option before any model work),
the model, the samples of ``--datasets``, and the options every study passes to the runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cli import UsageError, positive


def check_args(args) -> None:
    """Every option that needs no model, each failing with one line naming it."""
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give at least 1 sample per dataset")
    positive(args, "--limit", args.limit, allow_none=True)
    positive(args, "--batch-size", args.batch_size)
    positive(args, "--max-new-tokens", args.max_new_tokens, allow_none=True)
    positive(args, "--chunk-size", args.chunk_size, allow_none=True)
    positive(args, "--seed", args.seed, low=0, meaning="the subsample and bootstrap seed")
    if args.chunk_size is not None and args.chunk_size % args.batch_size:
        raise UsageError(f"--chunk-size {args.chunk_size}: must be a multiple of --batch-size {args.batch_size} "
                         "(batches never straddle chunks)")
    check_out(args.out)
    if args.revision is not None:
        from mech.model_files import local_kind

        if local_kind(args.model):
            raise UsageError(f"--revision {args.revision}: applies to a hub id only, and --model {args.model} is "
                             f"{local_kind(args.model)}; drop --revision, or give the hub id it pins")
    names = dataset_names(args)
    sources(args, names)
    for check in getattr(args, "checks", None) or []:
        check(args)


def check_out(out: Path) -> None:
    """``--out`` names a folder this system can make: each part within the filesystem's
    name length, the whole within its path length (with room for the files inside)."""
    import os

    def exists(path: Path) -> bool:
        try:
            return path.exists()
        except OSError:  # e.g. a name too long to look up
            return False

    existing = next((p for p in [out.absolute(), *out.absolute().parents] if exists(p)), Path("/"))
    try:
        name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in out.parts:
        if len(os.fsencode(part)) > name_max:
            raise UsageError(f"--out {str(out)[:60]}...: the name {part[:40]}... is {len(os.fsencode(part))} bytes, "
                             f"over this filesystem's {name_max}; give a shorter folder name")
    room = 200  # chunks/<dataset>/<run>/.chunk-<id>.json.<host>-<pid>.<random>.tmp inside it
    if len(os.fsencode(str(out.absolute()))) + room > path_max:
        raise UsageError(f"--out {str(out)[:60]}...: the path is too long for this filesystem ({path_max} bytes "
                         "with the files inside); give a shorter one")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")


def check_model_source(args) -> None:
    """The model ``--model`` names exists and is supported, and its weight files are whole,
    before the samples load (cheap: config and file headers, no weights)."""
    from mech.model import resolve_source
    from mech.model_files import RANDOM

    if args.model.startswith(RANDOM):
        return  # nothing on disk to check
    try:
        resolve_source(args.model, args.revision)
    except (ValueError, OSError, ImportError) as error:
        raise UsageError(f"--model {args.model}: {error}") from None


def check_model_args(args, model) -> None:
    """The options that need the model (layer numbers, ...), before any sample is run."""
    for check in getattr(args, "model_checks", None) or []:
        check(args, model)


def import_modules(args) -> None:
    import importlib

    for name in getattr(args, "imports", []):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise UsageError(f"--import {name}: cannot import it ({error}); give an importable module name "
                             "(its folder on PYTHONPATH)") from None


def dataset_names(args) -> list[str]:
    import mech

    import_modules(args)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if not names:
        raise UsageError("--datasets is empty; e.g. --datasets shapes")
    unknown = [n for n in names if n not in mech.datasets.DATASETS]
    if unknown:
        raise UsageError(f"--datasets {','.join(unknown)}: unknown; known: {', '.join(sorted(mech.datasets.DATASETS))}")
    return names


def sources(args, names=None) -> dict[str, str]:
    """``--source NAME=PATH`` as ``{name: path}`` (each name one of ``--datasets``)."""
    names = dataset_names(args) if names is None else names
    out = {}
    for item in getattr(args, "source", None) or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--source {item}: give NAME=PATH, e.g. --source vqav2=/data/vqav2")
        if name not in names:
            raise UsageError(f"--source {item}: {name} is not among --datasets ({', '.join(names)})")
        if not Path(path).expanduser().exists() and path.count("/") != 1:
            raise UsageError(f"--source {item}: {path} does not exist")
        out[name] = str(Path(path).expanduser()) if Path(path).expanduser().exists() else path
    return out


def question_types(args) -> tuple[str, ...] | None:
    """``--question-types`` as a tuple (None: each shapes set's default types); refused
    unless every dataset is a shapes set."""
    from mech.datasets.shapes import EXTRA_TYPES, QUESTION_TYPES, is_shapes_set

    text = getattr(args, "question_types", None)
    if text is None:
        return None
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    known = QUESTION_TYPES + EXTRA_TYPES
    unknown = [t for t in types if t not in known]
    if not types or unknown:
        raise UsageError(f"--question-types {text}: {'unknown ' + ', '.join(unknown) if unknown else 'empty'}; "
                         f"use some of {', '.join(known)}, e.g. --question-types color,shape")
    other = [n for n in dataset_names(args) if not is_shapes_set(n)]
    if other:
        raise UsageError(f"--question-types {text}: only the shapes sets have question types, not "
                         f"{', '.join(other)}; drop it or give --datasets shapes,shapes-dots")
    return types


def load_model(args):
    import mech

    try:
        if args.remote == "ndif":
            from mech.remote import require_served

            require_served(args.model, args.revision)
        device = mech.parallel.device()
        return mech.load(args.model, revision=args.revision, dispatch=args.remote != "ndif",
                         **({"device_map": device} if device else {}))
    except (ValueError, OSError, ImportError) as error:
        raise UsageError(f"--model {args.model}: {error}") from None


def load_samples(args) -> dict[str, list]:
    """``{dataset: samples}`` for ``--datasets`` with ``--limit``, ``--seed`` and ``--source``."""
    import mech

    given, types = sources(args), question_types(args)
    out = {}
    for name in dataset_names(args):
        options = {"source": given[name]} if name in given else {}
        if types is not None:
            options["types"] = types
        try:
            out[name] = list(mech.datasets.load(name, limit=args.limit, seed=args.seed, **options))
            mech.datasets.check_samples(out[name], "its loader")  # ids, images, answers: before any model work
        except (ValueError, TypeError, OSError, ImportError) as error:
            raise UsageError(f"--datasets {name}: {error}") from None
        unanswered = [s.id for s in out[name] if not s.answers]
        if unanswered:  # a study's accuracy is over every sample: none may drop out of it
            raise UsageError(f"--datasets {name}: sample {unanswered[0]} (and {len(unanswered) - 1} more) has no gold "
                             "answers; every study reports accuracy over all its samples: give each its answers")
        if not out[name]:
            raise UsageError(f"--datasets {name}: no samples (is the source empty?)")
    return out


def start(args):
    """Check every option, the model's files and the samples (loaded and checked), then
    load the model and check the options that need it: all before the first generation.
    ``(model, samples)``."""
    check_args(args)
    check_model_source(args)
    samples = load_samples(args)
    model = load_model(args)
    check_model_args(args, model)
    return model, samples


def run_options(args) -> dict[str, Any]:
    """Keyword options every study passes to `mech.run` / `mech.sweep`."""
    options = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, protocol=args.protocol,
                   chunk_size=args.chunk_size, progress=not args.no_progress,
                   reuse_other_code=getattr(args, "reuse_other_code", False))
    if args.remote:
        options["remote"] = True if args.remote == "ndif" else "local"
    return options


if __name__ == "__main__":
    from .cli import not_a_study

    not_a_study(__spec__.name)
