"""Encoder names as users write them: ``dino``, ``supervised@v2`` (a non-default
published weight file), ``timm:convnext_tiny.fb_in1k`` (a member of a family)."""

from __future__ import annotations

from dataclasses import dataclass

from rcdm_cli.errors import UsageError


@dataclass(frozen=True)
class EncoderName:
    base: str
    variant: str | None = None
    argument: str | None = None

    @classmethod
    def parse(cls, text: str) -> "EncoderName":
        head, at, variant = text.strip().partition("@")
        base, colon, argument = head.partition(":")
        if not base or (at and not variant) or (colon and not argument):
            raise UsageError(f"malformed encoder name {text!r}: expected NAME, NAME@WEIGHTS or FAMILY:MODEL")
        return cls(base, variant or None, argument or None)

    def __str__(self) -> str:
        out = self.base + (f":{self.argument}" if self.argument else "")
        return out + (f"@{self.variant}" if self.variant else "")

    @property
    def without_weights(self) -> "EncoderName":
        """The encoder itself, whichever weights it was asked with (what a built
        encoder and a checkpoint's metadata call it)."""
        return EncoderName(self.base, None, self.argument)
