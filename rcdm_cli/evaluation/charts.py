"""The attribute measures as a picture: one bar per attribute and representation, so
that "the head keeps less than the backbone" is seen at a glance rather than read
from a table.

Three panels share the attribute axis: retrieval (MRR, with chance marked), spread
(0: the representation fixes the attribute, 1: leaves it free) and, with
augmentations, how much of each augmentation's change the samples carry (with the
bootstrap interval). matplotlib draws it without a display (the Agg canvas).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rcdm_cli.fileio import write_bytes

COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def _grouped(ax, labels: list[str], series: list[tuple[str, list[float | None]]], errors=None) -> list:
    """Horizontal bars: one group per label, one bar per series; a missing value
    leaves a gap (and is marked so that it is not read as zero). Returns one handle
    per series, for the legend."""
    handles = []
    count = max(1, len(series))
    height = 0.8 / count
    for s, (name, values) in enumerate(series):
        positions = [i - 0.4 + height * (s + 0.5) for i in range(len(labels))]
        shown = [0.0 if v is None else v for v in values]
        xerr = None
        if errors is not None:
            lows, highs = errors[s]
            xerr = [
                [max(0.0, v - lo) if lo is not None and v is not None else 0.0 for v, lo in zip(values, lows)],
                [max(0.0, hi - v) if hi is not None and v is not None else 0.0 for v, hi in zip(values, highs)],
            ]
        handles.append(ax.barh(positions, shown, height=height * 0.95, color=COLOURS[s % len(COLOURS)], label=name,
                               xerr=xerr, error_kw={"elinewidth": 0.8, "capsize": 2}))
        for p, v in zip(positions, values):
            if v is None:
                ax.text(0.01, p, "n/a", va="center", fontsize=7, color="#777777")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    return handles


def attribute_chart(representations: list[dict[str, Any]], title: str = "What the samples keep") -> bytes:
    """PNG bytes of the chart. ``representations`` holds one result record of
    ``evaluate attributes`` per representation (``label``, ``attributes``,
    ``augmentations``)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    attributes = list(dict.fromkeys(a for r in representations for a in r["attributes"]))
    pairs = [
        (aug, attr)
        for r in representations
        for aug, block in (r.get("augmentations") or {}).items()
        for attr in block["attributes"]
        if attr in (block.get("changes") or [])
    ]
    pairs = list(dict.fromkeys(pairs))
    panels = 3 if pairs else 2
    rows_per_panel = [len(attributes), len(attributes)] + ([len(pairs)] if pairs else [])
    height = 1.2 + sum(0.22 * max(3, n) * max(1, len(representations)) ** 0.5 + 0.6 for n in rows_per_panel)
    figure = Figure(figsize=(8.5, height), dpi=110)
    axes = figure.subplots(panels, 1, gridspec_kw={"height_ratios": [max(3, n) for n in rows_per_panel]})
    names = [r["label"] for r in representations]

    def column(key: str, source: str = "attributes") -> list[tuple[str, list]]:
        return [(r["label"], [(r[source].get(a) or {}).get(key) for a in attributes]) for r in representations]

    handles = _grouped(axes[0], attributes, column("mrr"))
    for chance in _chances(representations, attributes, "chance_mrr"):
        axes[0].axvline(chance, color="#333333", linestyle="--", linewidth=0.9)
    axes[0].set_xlim(0, 1)
    counts = sorted({(r.get("images"), r.get("samples_per_image")) for r in representations})
    axes[0].set_title(
        "Retrieval: MRR of the image by attribute distance to its samples (dashed: chance"
        + (f"; {counts[0][0]} images × {counts[0][1]} samples" if len(counts) == 1 else "") + ")",
        fontsize=9, loc="left",
    )
    _grouped(axes[1], attributes, column("spread"))
    axes[1].set_xlim(0, 1.05)
    for chance in _chances(representations, attributes, "chance_spread"):
        axes[1].axvline(chance, color="#333333", linestyle="--", linewidth=0.9)
    axes[1].set_title(
        "Spread among one image's samples, over all samples (0 = fixed by the representation; dashed: chance)",
        fontsize=9, loc="left",
    )
    if pairs:
        labels = [f"{aug}: {attr}" for aug, attr in pairs]
        series, errors = [], []
        for r in representations:
            blocks = r.get("augmentations") or {}
            found = [((blocks.get(aug) or {}).get("attributes") or {}).get(attr) or {} for aug, attr in pairs]
            series.append((r["label"], [f.get("carried") for f in found]))
            errors.append(([f.get("ci_low") for f in found], [f.get("ci_high") for f in found]))
        _grouped(axes[2], labels, series, errors)
        axes[2].axvline(0.0, color="#333333", linewidth=0.8)
        axes[2].axvline(1.0, color="#333333", linestyle="--", linewidth=0.9)
        axes[2].set_title(
            "Carried: share of the augmentation's change the samples show (1 = follows it, 0 = invariant; 95% CI)",
            fontsize=9, loc="left",
        )
    figure.legend(handles, names, fontsize=8, loc="upper right", framealpha=0.9, ncols=min(3, len(names)))
    figure.suptitle(title, fontsize=11, x=0.02, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _chances(representations: list[dict[str, Any]], attributes: list[str], key: str) -> set[float]:
    """The chance values of one measure (one when every representation was measured
    on as many images and samples)."""
    return {(r["attributes"].get(a) or {}).get(key) for r in representations for a in attributes} - {None}


def save_attribute_chart(path: str | Path, representations: list[dict[str, Any]], title: str = "What the samples keep") -> Path:
    path = Path(path)
    write_bytes(path, attribute_chart(representations, title))
    return path
