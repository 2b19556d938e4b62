"""A run folder as one page: ``python -m studies.report OUT`` writes ``OUT/report.html``.

Every study dataset under OUT (the ``.nc`` files the studies write, ``chunks/`` left out,
a configuration linked as the latest shown once; the main job's first) becomes one section: what was run (the
command that made it, to copy), its provenance (model, family, datasets and samples,
protocol, layers and how they were chosen, with how settled the discovery is, versions),
its tables (each study's own, `report_tables`; the same cells it prints) and its figure.
The page is self-contained: CSS inline, figures inlined as PNG data URIs, no script and
no request to any network, so it opens anywhere, offline, and can be mailed as one file.
"""

from __future__ import annotations

import argparse
import base64
import html
import importlib
import json
import time
from pathlib import Path

from . import cli

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2125; background: #fafafa; }
header { background: #24313d; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c9d3dc; }
main { padding: 8px 32px 48px; max-width: 1400px; }
nav ul { columns: 3; padding-left: 18px; }
section { background: #fff; border: 1px solid #dde2e6; border-radius: 6px; margin: 22px 0; padding: 8px 22px 18px; }
h2 { font-size: 18px; margin: 14px 0 6px; }
h3 { font-size: 15px; margin: 18px 0 6px; color: #34404b; }
pre { background: #f1f3f5; padding: 8px 10px; border-radius: 4px; overflow-x: auto; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 3px 9px; border-bottom: 1px solid #e6e9ec; vertical-align: top; }
th { background: #f1f3f5; text-align: left; }
td.num, th.num { text-align: right; white-space: nowrap; }
tr.gap td { border: 0; height: 8px; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
dl.prov dt { color: #5b6670; }
dl.prov dd { margin: 0; word-break: break-word; }
ul.legend { color: #5b6670; font-size: 12.5px; margin: 4px 0 12px; padding-left: 18px; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eceff1; }
.note { color: #8a5300; background: #fff6e5; border-left: 3px solid #f0a020; padding: 6px 10px; }
.muted { color: #6c757d; }
"""

# the main job's datasets first, then the paper's order; other studies after them
ORDER = ("review_layer", "layer_masking", "hellinger_profile", "controls", "baselines", "strategies", "pre_layer",
         "mask_ratio")
# provenance shown first, in this order (the rest follows, alphabetically)
FIRST = ("study", "model", "revision", "family", "decoder_layers", "datasets", "limit", "seed", "protocol",
         "layers_source", "fusion_layers", "review_layer", "post_layer", "discovery_frequencies", "rho", "lam",
         "mask_at", "candidates", "heads", "controls", "seeds", "created", "config_id")
LONG = ("generation", "scorers", "prompt_template", "versions", "code", "settings", "layers_reason",
        "discovery_by_question_type", "closest_reason", "chunks_of_other_code")


def datasets_in(out: Path) -> list[Path]:
    """Every study dataset under ``out`` (chunks left out), each file once (a link to the
    latest counts as its target), newest first."""
    seen, found = set(), []
    for path in sorted(out.rglob("*.nc")):
        if "chunks" in path.relative_to(out).parts:
            continue
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        found.append(path)
    order = {name: i for i, name in enumerate(ORDER)}
    return sorted(found, key=lambda p: (order.get(p.stem if p.parent == out else p.parent.name, len(order)),
                                        -p.resolve().stat().st_mtime))


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


def _frequencies(value: str) -> str:
    """``discovery_frequencies`` as one sentence (how settled the discovered layers are)."""
    try:
        f = json.loads(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    share = lambda x: f"{100 * float(x):.0f}%"
    fusion = ", ".join(f"{layer}: {share(v)}" for layer, v in f.get("fusion", {}).items()) or "none"
    review = ", ".join(f"{layer}: {share(v)}" for layer, v in f.get("review", {}).items()) or "none"
    text = (f"over {f['n_bootstrap']:,} bootstrap resamples of the {f['n_samples']:,} samples, selected as fusion "
            f"layer — {fusion}; as review layer — {review}; no review layer — {share(f['no_review'])}; this exact "
            f"answer — {share(f['this_answer'])}")
    if not f.get("stable", True):
        return f'<span class="note">not stable: {html.escape(text)}; n is too small for a settled answer</span>'
    return html.escape(text)


def _value(key: str, value) -> str:
    if key == "discovery_frequencies":
        return _frequencies(value)
    text = str(value)
    if key in LONG or len(text) > 160:
        try:
            text = json.dumps(json.loads(text), indent=1)
        except (TypeError, ValueError):
            pass
        return f"<details><summary>{html.escape(text[:90])}…</summary><pre>{html.escape(text)}</pre></details>" \
            if len(text) > 90 else html.escape(text)
    return html.escape(text)


def provenance(attrs: dict) -> str:
    """The main provenance as a list; everything else the file records folded under it."""
    def rows(keys):
        return "".join(f"<dt>{html.escape(k)}</dt><dd>{_value(k, attrs[k])}</dd>" for k in keys)

    first = [k for k in FIRST if k in attrs]
    rest = sorted(k for k in attrs if k not in FIRST and k != "command")
    return (f'<dl class="prov">{rows(first)}</dl>'
            + (f'<details><summary>everything else it records ({len(rest)})</summary><dl class="prov">{rows(rest)}'
               "</dl></details>" if rest else ""))


def tables(study: str, ds) -> tuple[list[str], str]:
    """The study's own tables as HTML (`report_tables` of its module), or a note why not."""
    try:
        module = importlib.import_module(f"studies.{study}")
    except ImportError:
        return [], f"no study module studies.{study}"
    make = getattr(module, "report_tables", None)
    if make is None:
        return [], f"studies.{study} has no report_tables: its variables are listed below"
    try:
        return [t.html() for t in make(ds)], ""
    except (KeyError, ValueError, IndexError) as error:  # a dataset of an older layout
        return [], f"its tables could not be made from this file ({type(error).__name__}: {error})"


def variables(ds) -> str:
    rows = "".join(
        f"<tr><td class=\"txt\">{html.escape(name)}</td><td class=\"txt\">{html.escape(' × '.join(var.dims))}</td>"
        f"<td class=\"txt\">{html.escape(str(var.attrs.get('units', '')))}</td>"
        f"<td class=\"txt\">{html.escape(str(var.attrs.get('long_name', '')))}</td></tr>"
        for name, var in ds.data_vars.items())
    sizes = ", ".join(f"{d} {n}" for d, n in ds.sizes.items())
    return (f"<details><summary>variables ({len(ds.data_vars)}; dims: {html.escape(sizes)})</summary><table>"
            f"<thead><tr><th>name</th><th>dims</th><th>units</th><th>meaning</th></tr></thead><tbody>{rows}</tbody>"
            "</table></details>")


def section(path: Path, out: Path, index: int) -> tuple[str, str]:
    """``(anchor entry, section html)`` for one dataset file."""
    import xarray as xr

    with xr.open_dataset(path) as ds:
        ds = ds.load()
    attrs = dict(ds.attrs)
    study = str(attrs.get("study", path.stem))
    where = path.relative_to(out)
    real = path.resolve()
    made, note = tables(study, ds)
    figure = real.with_suffix(".png")
    parts = [f'<section id="d{index}"><h2>{html.escape(study)} <span class="muted">— {html.escape(str(where))}'
             + (f" → {html.escape(str(real.relative_to(out.resolve())))}" if real != path.absolute() and
                real.is_relative_to(out.resolve()) else "") + "</span></h2>"]
    if "command" in attrs:
        parts.append(f"<h3>Command</h3><pre>{html.escape(str(attrs['command']))}</pre>")
    parts.append("<h3>Provenance</h3>" + provenance(attrs))
    parts.append("<h3>Tables</h3>" + ("".join(made) if made else f'<p class="muted">{html.escape(note)}</p>'))
    parts.append("<h3>Figure</h3>" + (_image(figure) if figure.exists() else
                                      f'<p class="muted">no figure file beside it ({html.escape(figure.name)})</p>'))
    parts.append(variables(ds) + "</section>")
    entry = f'<li><a href="#d{index}">{html.escape(study)}</a> <span class="muted">{html.escape(str(where))}</span></li>'
    return entry, "".join(parts)


def render(out: Path) -> str:
    files = datasets_in(out)
    if not files:
        raise cli.UsageError(f"OUT {out}: no study datasets (.nc) in it; run a study with --out {out} first, "
                             "e.g. python -m studies.review_layer --out " + str(out))
    entries, sections = zip(*(section(path, out, i) for i, path in enumerate(files)))
    made = time.strftime("%Y-%m-%d %H:%M")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>mech report: {html.escape(str(out))}</title><style>{CSS}</style></head><body>"
            f"<header><h1>mech report</h1><p>{html.escape(str(out.resolve()))} · {len(files)} dataset"
            f"{'s' * (len(files) != 1)} · made {made} by python -m studies.report</p></header><main>"
            f"<nav><h3>Datasets</h3><ul>{''.join(entries)}</ul></nav>{''.join(sections)}</main></body></html>")


def main(argv=None) -> Path:
    import sys

    from mech.store import atomic_write

    p = argparse.ArgumentParser(prog="python -m studies.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, metavar="OUT", help="a run folder (a study's --out)")
    args = p.parse_args(sys.argv[1:] if argv is None else [str(a) for a in argv])
    if not args.out.is_dir():
        raise cli.UsageError(f"OUT {args.out}: no such folder; give a study's --out folder")
    page = render(args.out)
    path = atomic_write(args.out / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
    print(f"wrote {path} ({len(page.encode()) / 2**20:.1f} MiB, self-contained)")
    return path


if __name__ == "__main__":
    cli.cli(main)
