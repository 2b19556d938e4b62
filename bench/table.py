"""The README's performance tables from one ``bench/results.json``.

    python -m bench.table bench/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _value(row: dict, key: str) -> str:
    value = row.get(key + "_s", row.get(key))
    unit = " s" if key + "_s" in row else " MiB"
    return f"{value:.3f}{unit}" if value < 100 else f"{value:.1f}{unit}"


def markdown(result: dict) -> str:
    lines = ["| measure | toolkit | anchor | ratio | limit | target | pass |", "|---|---|---|---|---|---|---|"]
    for row in result["results"].values():
        ratio = f"{row['ratio']:.3f}"
        if "pair_ratio_median" in row and len(row.get("toolkit_all_s", [0, 0])) > 1:
            ratio += f" (pair median {row['pair_ratio_median']:.3f})"
        if "ids_equal_traces" in row:
            ratio += "; ids " + ("equal to" if row["ids_equal_traces"] else "DIFFER from") + " traces"
        if "ids_equal_naive" in row:
            ratio += "; ids " + ("equal to" if row["ids_equal_naive"] else "DIFFER from") + " naive"
        if "max_logit_difference_vs_naive" in row:
            ratio += f", logits within {row['max_logit_difference_vs_naive']:.1e} of {row['max_abs_logit']:.2f}"
        if "templates" in row:
            ratio += f"; templates {row['templates']['bytes'] / 2**20:.0f} MiB"
        limit = f"{row['limit']:.3f}" if "limit" in row else "—"
        target = "reported" if row["target"] is None else row.get("target_text") or f"≤ {row['target']:.2f}"
        verdict = "—" if row["passed"] is None else ("pass" if row["passed"] else "**miss**")
        name = row["measure"].removesuffix(" [s]").removesuffix(" [MiB]")
        lines.append(f"| {name} | {_value(row, 'toolkit')} | {_value(row, 'anchor')} | {ratio} | {limit} "
                     f"| {target} | {verdict} |")
    depth = result.get("depth_table") or []
    if depth:
        lines += ["", "| layers | prompt tokens | naive s/sample | shared, first batch | shared, templates kept "
                  "| of it decode | ratio first (limit) | ratio kept (limit) | templates |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in depth:
            lines.append(f"| {r['layers']} | {r['prompt_tokens']} | {r['naive_s_per_sample']:.3f} "
                         f"| {r['shared_first_s_per_sample']:.3f} | {r['shared_reuse_s_per_sample']:.3f} "
                         f"| {r['shared_reuse_decode_s_per_sample']:.3f} "
                         f"| {r['ratio_first']:.3f} ({r['limit_first']:.3f}) "
                         f"| {r['ratio_reuse']:.3f} ({r['limit_reuse']:.3f}) "
                         f"| {r['template_bytes'] / 2**20:.0f} MiB |")
    m = result["machine"]
    lines += ["", f"Measured on {m['cpu']} ({m['cpu_cores']} cores), {m['device']}, {m['torch_threads']} torch "
              f"thread(s), torch {m['torch']}, transformers {m['transformers']}, nnsight {m['nnsight']}; "
              f"{result['reps']} interleaved pairs per forward row"
              + "".join(f", {len(row['toolkit_all_s'])} for {name}" for name, row in result["results"].items()
                        if name.startswith("sweep")) + "; other "
              f"load: {result['other_load']['before']}; {result['seconds'] / 60:.1f} min in all."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json").read_text())))
