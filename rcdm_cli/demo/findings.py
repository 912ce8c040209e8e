"""The paper's findings as comparisons of measured numbers, each with a verdict the
numbers decide.

Bordes et al. (2022) find that a self-supervised backbone keeps object scale,
grayscale status and the background's colour, and is not invariant to the training
augmentations; that its projector head discards grayscale status and the background's
colour, so that samples conditioned on it vary far more; and that a supervised
representation constrains appearance less than a self-supervised backbone. Each
finding here names the two representations it compares (by role: ``backbone``,
``head``, ``supervised``), the number it compares and the direction the paper
predicts. The verdict is "agrees" or "disagrees", and "clearly" only when the two
95% bootstrap intervals do not overlap: a difference inside the noise of a few dozen
held-out scenes is reported as such, not as a finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCENE_FACTORS = ("scene-shape", "scene-colour", "scene-background", "scene-size", "scene-x", "scene-y", "scene-gray")


@dataclass(frozen=True)
class Finding:
    claim: str  # the paper's finding, in a sentence
    measure: str  # what is compared here, in words
    low: str  # the role predicted to have the lower value
    high: str  # the role predicted to have the higher value
    attribute: str
    quantity: str  # "spread" or "carried"
    augmentation: str | None = None

    def value(self, record: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
        """(value, interval low, interval high) in one representation's record."""
        if self.quantity == "carried":
            found = ((record.get("augmentations") or {}).get(self.augmentation) or {}).get("attributes", {}).get(self.attribute) or {}
            return found.get("carried"), found.get("ci_low"), found.get("ci_high")
        found = (record.get("attributes") or {}).get(self.attribute) or {}
        low, high = found.get(f"{self.quantity}_ci") or (None, None)
        return found.get(self.quantity), low, high


FINDINGS = (
    Finding(
        "The backbone keeps grayscale status; the head discards it.",
        "share of a grayscale view's loss of colourfulness that the samples show (carried)", "head", "backbone",
        "colourfulness", "carried", "grayscale",
    ),
    Finding(
        "The backbone keeps the background's colour; the head discards it.",
        "spread of the background colour among one scene's samples", "backbone", "head", "scene-background", "spread",
    ),
    Finding(
        "The backbone keeps the object's scale.",
        "spread of the object's size among one scene's samples", "backbone", "head", "scene-size", "spread",
    ),
    Finding(
        "The backbone is not invariant to the training augmentations (a zoom crop).",
        "share of a zoom crop's change of the object's size that the samples show (carried)", "head", "backbone",
        "scene-size", "carried", "crop-0.5",
    ),
    Finding(
        "A supervised representation constrains appearance less than a self-supervised backbone.",
        "spread of the object's colour among one scene's samples", "backbone", "supervised", "scene-colour", "spread",
    ),
    Finding(
        "A supervised representation constrains appearance less than a self-supervised backbone.",
        "spread of the background colour among one scene's samples", "backbone", "supervised", "scene-background", "spread",
    ),
)


def verdict(low: tuple, high: tuple) -> str:
    """Whether ``low`` < ``high`` as predicted, and whether their intervals part."""
    (a, a_lo, a_hi), (b, b_lo, b_hi) = low, high
    if a is None or b is None:
        return "not measured"
    apart = None not in (a_lo, a_hi, b_lo, b_hi) and (a_hi < b_lo or b_hi < a_lo)
    if a < b:
        return "agrees clearly" if apart else "agrees (intervals overlap)"
    return "disagrees clearly" if apart else "disagrees (intervals overlap)"


def assess(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each finding whose two roles were measured, with both values, their intervals
    and the verdict, then the overall one: on how many of the scenes' factors the
    head's samples vary more. ``records`` maps a role to that representation's
    record."""
    rows = []
    for finding in FINDINGS:
        if finding.low not in records or finding.high not in records:
            continue
        if finding.augmentation and finding.augmentation not in (records[finding.low].get("augmentations") or {}):
            continue
        low, high = finding.value(records[finding.low]), finding.value(records[finding.high])
        rows.append({
            "claim": finding.claim, "measure": finding.measure, "attribute": finding.attribute,
            "quantity": finding.quantity, "augmentation": finding.augmentation,
            "expected": f"{finding.low} < {finding.high}",
            finding.low: {"value": low[0], "ci": [low[1], low[2]]},
            finding.high: {"value": high[0], "ci": [high[1], high[2]]},
            "verdict": verdict(low, high),
        })
    if "backbone" in records and "head" in records:
        rows.append(_varies_more(records["backbone"], records["head"]))
    return rows


def _varies_more(backbone: dict[str, Any], head: dict[str, Any]) -> dict[str, Any]:
    """The paper's "samples conditioned on the head vary far more", factor by factor:
    how many of the scenes' factors have a higher spread under the head, and on how
    many the difference is clear (intervals apart)."""
    more = clearly = less_clearly = measured = 0
    for name in SCENE_FACTORS:
        b = Finding("", "", "backbone", "head", name, "spread").value(backbone)
        h = Finding("", "", "backbone", "head", name, "spread").value(head)
        if b[0] is None or h[0] is None:
            continue
        measured += 1
        outcome = verdict(b, h)
        more += outcome.startswith("agrees")
        clearly += outcome == "agrees clearly"
        less_clearly += outcome == "disagrees clearly"
    summary = f"{more} of {measured} ({clearly} clearly; {less_clearly} clearly the other way)"
    if measured == 0:
        outcome = "not measured"
    elif more * 2 > measured:
        outcome = "agrees clearly" if clearly > less_clearly and clearly * 2 > measured else "agrees (mostly within noise)"
    else:
        outcome = "disagrees clearly" if less_clearly * 2 > measured else "disagrees (mostly within noise)"
    return {
        "claim": "Samples conditioned on the head vary more than samples conditioned on the backbone.",
        "measure": "the scenes' factors on which the head's samples spread more", "attribute": "scene-*",
        "quantity": "spread", "augmentation": None, "expected": "backbone < head",
        "backbone": {"value": None, "ci": [None, None]}, "head": {"value": None, "ci": [None, None]},
        "count": summary, "verdict": outcome,
    }
