"""What the demo's report says, block by block, from the measured records: the
paper's findings with their verdicts first, then the pictures and the tables behind
them. Kept apart from the run so that the run reads as the experiment."""

from __future__ import annotations

from pathlib import Path

from rcdm_cli.demo import report as page

def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _with_ci(entry: dict) -> str:
    lo, hi = entry["ci"]
    return _fmt(entry["value"]) + (f" [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None else "")


def report_blocks(settings, data: Path, records: dict, findings: list, pictures: dict, seconds: float) -> list[dict]:
    roles = list(records)
    labels = {r: records[r]["label"] for r in roles}
    any_record = records[roles[0]]
    first_score = next(iter(any_record["attributes"].values()))
    n, k = any_record["images"], any_record["samples_per_image"]
    trained = [r for r in roles if records[r].get("steps")]
    blocks = [
        page.paragraph(
            "An RCDM draws images from the representation an encoder gives of an image. What stays the same across the "
            "samples of one image is what the representation encodes; what varies is what it discards. Here the images "
            "are procedural scenes whose every factor (shape, colour, background, size, position, grayscale) is known, "
            f"held out from training (factors in <code>{data / 'scenes.json'}</code>), and each representation's samples "
            "are measured, attribute by attribute."
        ),
    ]
    if trained:
        blocks.append(page.paragraph(
            "Models: " + "; ".join(
                f"<code>{labels[r]}</code>: {records[r]['steps']} training steps in {records[r]['train_seconds']:.0f} s"
                for r in trained
            ) + f" (batch {settings.batch_size}, {settings.train_images} training scenes). The encoders were trained by "
            "rcdm on the same kind of scenes (<code>rcdm encoders scenes-simclr</code>): SimCLR, whose head is trained to be "
            "invariant to crops, flips, colour jitter and grayscale"
            + (", and a supervised network that knows only the shape." if "supervised" in records else ".")
        ))
    if findings:
        blocks += [
            page.heading("The paper's findings, measured here"),
            page.table(
                ("finding (Bordes et al., 2022)", "measured by", "predicted lower", "predicted higher", "verdict"),
                [_finding_row(f) for f in findings],
                "Each finding predicts which representation has the lower value; 95% bootstrap intervals over the "
                f"{n} held-out scenes in brackets. 'clearly': the intervals do not overlap.",
            ),
        ]
    blocks += [
        page.heading("Samples of the same held-out scenes"),
        page.paragraph("Each row: a held-out scene as the models see it, then " + f"{k} samples from each representation "
                       + "(" + ", ".join(f"{r}: <code>{labels[r]}</code>" for r in roles) + ")."),
        page.picture(pictures["samples"], "samples"),
    ]
    if "augmented" in pictures:
        blocks += [
            page.heading(f"Conditioned on the {settings.augmentations[0]} view"),
            page.paragraph("The same scenes after the augmentation, and the samples each representation gives of them: "
                           "samples that follow the view show that the representation is not invariant to it."),
            page.picture(pictures["augmented"], "augmented"),
        ]
    blocks += [
        page.heading("What the samples keep, attribute by attribute"),
        page.picture(pictures["attributes"], "attribute chart", chart=True),
        page.table(
            ("attribute", "MRR ceiling", *(f"{labels[r]} MRR" for r in roles), *(f"{labels[r]} spread" for r in roles)),
            [
                (name, any_record["attributes"][name]["ceiling_mrr"], *(records[r]["attributes"][name]["mrr"] for r in roles),
                 *(_fmt(records[r]["attributes"][name]["spread"]) for r in roles))
                for name in any_record["attributes"]
            ],
            f"{n} scenes × {k} samples. MRR: the rank of the scene among all {n} by attribute distance to each of its "
            f"samples (chance {_fmt(first_score['chance_mrr'], 3)}; "
            "the ceiling is that of samples that reproduce the attribute exactly: scenes that share a factor tie). "
            "spread: variation among one scene's samples over variation among all samples (0 = fixed by the "
            f"representation; samples that ignore the scene score about {_fmt(first_score['chance_spread'])}). "
            "scene-* attributes are the scenes' exact factors read back by a parser; the others work on any photograph.",
        ),
    ]
    carried_rows = [
        (aug, attr, *(_carried(records[r], aug, attr) for r in roles))
        for aug, block in any_record["augmentations"].items()
        for attr in block["changes"] if attr in any_record["attributes"]
    ]
    if carried_rows:
        blocks.append(page.table(
            ("augmentation", "attribute", *(f"{labels[r]} carried" for r in roles)), carried_rows,
            "carried: the share of the augmentation's change of the attribute (on the scenes) that the samples show, "
            "with a 95% bootstrap interval: 1 = the representation follows the augmentation, 0 = it is invariant.",
        ))
    blocks += [
        page.heading("Interpolation"),
        page.paragraph("From scene A to scene B in representation space (slerp), with the same noise in every frame; one row per representation."),
        page.picture(pictures["interpolation"], "interpolation"),
        page.heading("Faithfulness in each encoder's own space"),
        page.table(
            ("representation", "mean rank", "MRR", "top-1", "chance rank", "chance MRR"),
            [
                (labels[r], records[r]["rank"]["mean_rank"], records[r]["rank"]["mrr"], records[r]["rank"]["top1"],
                 records[r]["rank"]["chance_mean_rank"], records[r]["rank"]["chance_mrr"])
                for r in roles
            ],
            "The rank of a scene among the held-out ones by the similarity of its samples' representations to theirs "
            "(1 is perfect). Each row is measured in its own encoder's space, so rows are not directly comparable.",
        ),
        page.paragraph(
            f"<span class='muted'>{n} held-out scenes, {k} samples each, {settings.sampler} with {settings.sampling_steps} "
            f"steps, seed {settings.seed}; {seconds:.0f} s in all.</span>"
        ),
    ]
    return blocks


def _finding_row(finding: dict) -> tuple:
    low, high = finding["expected"].split(" < ")
    if "count" in finding:
        return finding["claim"], finding["measure"], finding["count"], "", finding["verdict"]
    return (
        finding["claim"], finding["measure"], f"{low}: {_with_ci(finding[low])}", f"{high}: {_with_ci(finding[high])}",
        finding["verdict"],
    )


def _carried(record: dict, aug: str, attr: str) -> str:
    found = record["augmentations"][aug]["attributes"][attr]
    if found["carried"] is None:
        return "-"
    return f"{found['carried']:.2f} [{found['ci_low']:.2f}, {found['ci_high']:.2f}]"
