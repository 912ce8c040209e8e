#!/usr/bin/env python
"""Train ``scenes-simclr`` with several projector widths, everything else equal, and
probe each: how much the head's width decides what the head discards.

Why: the paper compares backbone and projector head; how strongly the head
discards the augmented factors depends on its width (a narrow head has to choose
what to keep, a wide one need not), so the comparison is worth reading against it.

    python scripts/projector_widths.py --widths 8 32 128 512 --out bench/results/miniature-widths

Each width's weights and JSON record (train_miniature's) go into ``--out``, then
``widths.json`` and ``widths.md`` (rows: width; columns: probe accuracy per factor
at the head, with the backbone beside it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_miniature as tm  # noqa: E402  (a sibling script, not a package)

log = logging.getLogger("projector_widths")


def table_markdown(rows: list[dict], chance: dict) -> str:
    factors = list(tm.FACTORS)
    head = "| width | " + " | ".join(f"{f} head (backbone)" for f in factors) + " | head invariance: grayscale / color-jitter (backbone) |"
    lines = [
        head,
        "|---|" + "---|" * (len(factors) + 1),
        "| chance | " + " | ".join(f"{chance[f]:.3f}" for f in factors) + " | |",
    ]
    for row in rows:
        acc = row["probe"]["accuracy"]
        cells = [f"{acc['head'][f]:.3f} ({acc['backbone'][f]:.3f})" for f in factors]
        inv = row.get("invariance")
        extra = ""
        if inv:
            extra = (
                f"{inv['grayscale']['head']:.3f} / {inv['color-jitter']['head']:.3f} "
                f"({inv['grayscale']['backbone']:.3f} / {inv['color-jitter']['backbone']:.3f})"
            )
        lines.append(f"| {row['width']} | " + " | ".join(cells) + f" | {extra} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32, 128, 512])
    parser.add_argument("--out", type=Path, required=True, help="a folder outside the package")
    parser.add_argument("--pool-cache", type=Path, default=None)
    parser.add_argument("--skip-existing", action="store_true", help="reuse a width whose JSON record exists")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for width in args.widths:
        name = f"scenes-simclr-w{width}"
        record = args.out / f"{name}.json"
        if not (args.skip_existing and record.is_file()):
            log.info("width %d", width)
            extra = ["--pool-cache", str(args.pool_cache)] if args.pool_cache else []
            tm.main(["--encoder", "simclr", "--proj-dim", str(width), "--name", name, "--out", str(args.out), *extra, *rest])
        data = json.loads(record.read_text())
        rows.append({"width": width, "probe": data["probe"], "invariance": data.get("invariance"),
                     "hyperparameters": data["hyperparameters"], "train_wall_seconds": data["train_wall_seconds"],
                     "final_loss_mean_last_50": data["final_loss_mean_last_50"]})
    chance = rows[0]["probe"]["chance"]
    (args.out / "widths.json").write_text(json.dumps({"rows": rows, "chance": chance}, indent=1) + "\n")
    markdown = table_markdown(rows, chance)
    hp = {k: v for k, v in rows[0]["hyperparameters"].items() if k != "proj_dim"}
    recipe = ", ".join(f"{k} {v}" for k, v in hp.items())
    walls = ", ".join(f"{r['width']}: {r['train_wall_seconds']:.0f} s" for r in rows)
    (args.out / "widths.md").write_text(
        "# scenes-simclr: projector width\n\n"
        f"Everything but the head's width as `scripts/train_miniature.py` trains the shipped encoder ({recipe}). "
        f"Training wall time per width ({walls}) on a shared 2-core machine: noisy.\n\n"
        "Linear-probe accuracy on held-out scenes (2000 train / 1000 test) at the head, the backbone's in "
        "brackets; chance is the majority-class rate. Last column: mean cosine similarity between a scene's "
        "representation and its augmented view's (`rcdm evaluate invariance`'s measure, 200 scenes).\n\n"
        + markdown + "\n"
    )
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
