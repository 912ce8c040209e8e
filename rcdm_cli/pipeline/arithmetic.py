"""``rcdm arith`` as a library: the representations it samples, from an expression
over images or from the paper's attribute transfer, and the files it writes.

Each recipe checks its inputs as it is made (before any weights load), names the
images it encodes (``operands``) and the representations it samples (``names``),
and records what it did for the manifest (``details``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from rcdm_cli import __version__
from rcdm_cli.errors import UsageError
from rcdm_cli.imaging import make_grid, save_png, to_pil
from rcdm_cli.inputs import list_images, load_image
from rcdm_cli.outputs import SampleLayout, write_samples
from rcdm_cli.pipeline import expression as expr
from rcdm_cli.pipeline.representations import remove_shared, rescale_to, shared_dimensions, transfer_attributes
from rcdm_cli.pipeline.sampling import SampleResult, resolved_eta
from rcdm_cli.preprocessing import diffusion_target

Encode = Callable[[Sequence[Image.Image]], torch.Tensor]


class Combination:
    """A weighted sum of image representations, such as ``a.jpg - b.jpg + c.jpg``;
    with ``rescale``, scaled to the operands' mean norm."""

    names = ["result"]

    def __init__(self, expression: str, rescale: bool = False):
        self.expression, self.rescale = expression, rescale
        self.tree = expr.parse(expression)
        unique: dict[str, Path] = {}
        for node in expr.paths(self.tree):
            path = Path(node.path).expanduser()
            if not path.is_file():
                raise expr.ExpressionError(expression, node.pos, f"no such image {node.path!r}")
            unique.setdefault(node.path, path)
        self._written = list(unique)  # as the expression writes them
        self.operands = list(unique.values())
        self.details: dict = {}

    def check(self) -> None:
        """Nothing beyond the operands, which the caller reads."""

    def representations(self, operand_reps: torch.Tensor, encode: Encode, batch_size: int) -> torch.Tensor:
        by_path = dict(zip(self._written, operand_reps))
        result = expr.evaluate(self.expression, self.tree, lambda p: by_path[p])
        if self.rescale:
            result = rescale_to(result, operand_reps)
        self.coefficients = expr.signed_weights(self.tree)
        self.details = {
            "expression": self.expression,
            "coefficients": self.coefficients,
            "rescale": self.rescale,
            "result_norm": float(result.norm()),
        }
        return result[None]

    def operand_labels(self) -> list[str]:
        return [f"{self.coefficients[p]:+g} {Path(p).name}" for p in self._written]


class AttributeTransfer:
    """The paper's attribute transfer: the dimensions ``attribute_from`` shares with
    its ``k`` nearest neighbours among the ``neighbors`` folder (active in more than
    ``n_common`` of them) replaced by ``target``'s. Samples the source, the source
    without its shared dimensions, and the transfer."""

    names = ["attribute", "without-shared", "transferred"]

    def __init__(self, attribute_from: Path, neighbors: Path, target: Path, k: int = 20, n_common: int = 14):
        for flag, value in (("--attribute-from", attribute_from), ("--target", target)):
            if not Path(value).expanduser().is_file():
                raise UsageError(f"{flag} must be an image file, got {value}")
        self.operands = [Path(attribute_from).expanduser(), Path(target).expanduser()]
        if not Path(neighbors).is_dir():
            raise UsageError(f"--neighbors must be a folder of images, got {neighbors}")
        self.bank_paths = list_images(Path(neighbors))
        if len(self.bank_paths) < k:
            raise UsageError(f"--neighbors holds {len(self.bank_paths)} images, fewer than --k {k}")
        if not 0 <= n_common < k:
            raise UsageError(f"--n-common must be between 0 and --k - 1 = {k - 1}, got {n_common}")
        self.k, self.n_common = k, n_common
        self.details: dict = {}
        self.replaces_everything = False

    def check(self) -> None:
        """A damaged neighbour fails now, not after the encoding."""
        for p in self.bank_paths:
            load_image(p)

    def representations(self, operand_reps: torch.Tensor, encode: Encode, batch_size: int) -> torch.Tensor:
        bank = torch.cat(
            [
                encode([load_image(p) for p in self.bank_paths[i : i + batch_size]])
                for i in range(0, len(self.bank_paths), batch_size)
            ]
        )
        neighbour_idx, shared = shared_dimensions(operand_reps[0], bank, self.k, self.n_common)
        # a representation without zeros (a projector head's, a ViT's) shares every dimension
        self.replaces_everything = bool(shared.all())
        source, target = operand_reps[0], operand_reps[1]
        self.details = {
            "attribute_from": str(self.operands[0]),
            "target": str(self.operands[1]),
            "neighbors": [str(self.bank_paths[i]) for i in neighbour_idx.tolist()],
            "k": self.k,
            "n_common": self.n_common,
            "shared_dimensions": int(shared.sum()),
        }
        return torch.stack([source, remove_shared(source, shared), transfer_attributes(source, target, shared)])

    def operand_labels(self) -> list[str]:
        return ["attribute", "target"]


def write_arith(layout: SampleLayout, recipe, run, options, network_calls: int, pictures, result: SampleResult) -> dict:
    """Every representation's samples and grid, and the overview: the operands in the
    first row, then a row of samples per representation. Returns the manifest, which
    the caller writes."""
    n = layout.n
    shown = [to_pil(diffusion_target(im, run.meta.image_size)) for im in pictures]
    written = write_samples(layout, result.samples)
    labels_row = recipe.operand_labels()
    columns = max(len(shown), n)
    tiles = list(shown) + [None] * (columns - len(shown))
    labels = list(labels_row) + [""] * (columns - len(labels_row))
    for j, name in enumerate(recipe.names):
        tiles += [to_pil(result.samples[j, i]) for i in range(n)] + [None] * (columns - n)
        labels += [f"{name} #{i}" for i in range(n)] + [""] * (columns - n)
    blank = to_pil(torch.ones(3, run.meta.image_size, run.meta.image_size))
    save_png(make_grid([t or blank for t in tiles], labels, columns=columns), layout.overview_path)
    return {
        "command": "arith",
        "rcdm_version": __version__,
        **recipe.details,
        "inputs": [str(p) for p in recipe.operands],
        "checkpoint": run.checkpoint_info(),
        "encoder": run.encoder_info(),
        "n": n,
        "sampling": {
            **options.to_dict(),
            "eta": resolved_eta(options),
            "same_noise": True,
            "network_calls": network_calls,
        },
        "device": str(run.device),
        "outputs": [
            {"name": name, "grid": written["grids"][j], "samples": written["samples"][j]}
            for j, name in enumerate(recipe.names)
        ],
        "overview": str(layout.overview_path),
        "seeds": result.seeds[0],
        "timings": {"sample_seconds": round(result.seconds, 3)},
    }
