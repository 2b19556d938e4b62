"""Printed tables: one formatter for every study.

Accuracies as percentages with one decimal (``81.2%``), differences in percentage points
with a sign (``+1.5``), CIs in brackets in the same points, p-values with three decimals
(``<0.001`` below that), the unmasked model as a row of its own, units in the headers, and
under the table a one-line legend for every abbreviation it uses (in printed text, once per
command: a line an earlier table printed is not repeated). The same `Table` renders as
aligned text (`Table.text`, what a study prints), as Markdown (`Table.markdown`) and as
HTML (`Table.html`, for `studies.report`), the last two always with their whole legend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# the abbreviations the tables use, each explained once under any table that shows it
LEGEND = {
    "Δ": "Δ: the row's system minus the system it is compared with, on the same samples, in percentage points",
    "95% CI": "95% CI: paired bootstrap interval of Δ (2,000 resamples of the samples), in percentage points",
    "p": "p: two-sided paired bootstrap p from the same resamples as the CI (p < 0.05 exactly when the CI "
         "excludes 0)",
    "acc CI": "95% CI: percentile bootstrap interval of the accuracy over the samples",
    "changed": "changed: predictions the contrastive run changes against the unmasked model",
    "1/t": "1/t: inverse seconds in generate per sample (1/s)",
    "ρ": "ρ: mask ratio, the quantile of contrastive scores below which image tokens are scaled",
    "λ": "λ: the scale given to those image tokens",
    "n": "n: samples",
    "H": "H: Hellinger distance of A(i) to the final layer's A (0: the same attention, 1: disjoint)",
}


SHOWN: set[str] = set()  # legend lines printed so far by this process


def percent(x) -> str:
    """``0.8125`` -> ``"81.2%"`` (NaN: ``"–"``)."""
    return "–" if _nan(x) else f"{100 * float(x):.1f}%"


def points(x) -> str:
    """A difference of fractions in percentage points: ``0.015`` -> ``"+1.5"``."""
    return "–" if _nan(x) else f"{100 * float(x):+.1f}"


def interval(low, high) -> str:
    """A CI of a difference in points: ``"[-0.5, +2.5]"``."""
    return "–" if _nan(low) or _nan(high) else f"[{100 * float(low):+.1f}, {100 * float(high):+.1f}]"


def accuracy_interval(low, high) -> str:
    """A CI of an accuracy in percent: ``"[76.0, 86.5]"``."""
    return "–" if _nan(low) or _nan(high) else f"[{100 * float(low):.1f}, {100 * float(high):.1f}]"


def p_value(p) -> str:
    """``0.0312`` -> ``"0.031"``, ``0.0004`` -> ``"<0.001"``."""
    if _nan(p):
        return "–"
    return "<0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def number(x, digits: int = 3) -> str:
    return "–" if _nan(x) else f"{float(x):.{digits}f}"


def _nan(x) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return False


@dataclass
class Table:
    """Rows of cells under headers; ``numeric`` columns are right-aligned. ``legend``:
    keys of `LEGEND` (or whole lines) explained under the table; ``note``: one more line."""

    headers: list[str]
    numeric: set[int] = field(default_factory=set)
    legend: list[str] = field(default_factory=list)
    title: str = ""
    note: str = ""
    rows: list[list[str] | None] = field(default_factory=list)

    def add(self, *cells) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"{len(cells)} cells for {len(self.headers)} columns ({self.headers})")
        self.rows.append([str(c) for c in cells])

    def gap(self) -> None:
        """A blank line between groups of rows (text only)."""
        if self.rows and self.rows[-1] is not None:
            self.rows.append(None)

    def legend_lines(self) -> list[str]:
        return [LEGEND.get(key, key) for key in dict.fromkeys(self.legend)] + ([self.note] if self.note else [])

    def text(self, repeat: bool = False) -> str:
        """Aligned columns and the legend lines not yet printed (all with ``repeat``)."""
        rows = [r for r in self.rows if r is not None]
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(self.headers)]

        def line(cells):
            return "  ".join(c.rjust(w) if i in self.numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        out = [self.title] if self.title else []
        out += [line(self.headers), "  ".join("-" * w for w in widths)]
        out += ["" if r is None else line(r) for r in self.rows]
        while out and out[-1] == "":
            out.pop()
        legend = [line for line in self.legend_lines() if repeat or line not in SHOWN]
        SHOWN.update(legend)
        return "\n".join(out + legend)

    def markdown(self) -> str:
        out = [f"**{self.title}**", ""] if self.title else []
        out += ["| " + " | ".join(self.headers) + " |",
                "|" + "|".join("---:" if i in self.numeric else "---" for i in range(len(self.headers))) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in self.rows if r is not None]
        legend = self.legend_lines()
        return "\n".join(out + ([""] + [f"{line}  " for line in legend] if legend else []))

    def html(self) -> str:
        """The table as an HTML ``<table>`` with its whole legend under it (`studies.report`)."""
        from html import escape

        def cells(row, tag):
            return "".join(f'<{tag} class="{"num" if i in self.numeric else "txt"}">{escape(c)}</{tag}>'
                           for i, c in enumerate(row))

        body = "".join("<tr class=\"gap\"><td colspan=\"%d\"></td></tr>" % len(self.headers) if r is None
                       else f"<tr>{cells(r, 'td')}</tr>" for r in self.rows)
        caption = f"<caption>{escape(self.title)}</caption>" if self.title else ""
        legend = "".join(f"<li>{escape(line)}</li>" for line in self.legend_lines())
        return (f"<table>{caption}<thead><tr>{cells(self.headers, 'th')}</tr></thead><tbody>{body}</tbody></table>"
                + (f'<ul class="legend">{legend}</ul>' if legend else ""))

    def __str__(self) -> str:
        return self.text(repeat=True)


if __name__ == "__main__":
    from .cli import not_a_study

    not_a_study(__spec__.name)
