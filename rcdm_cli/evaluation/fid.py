"""FID (and, on request, precision/recall) between two image folders, with the
standard Inception-v3 features as computed by torch-fidelity, an optional extra
(``pip install 'rcdm[fid]'``). Its weights download on first use; offline, the error
names the file that could not be fetched.

torch-fidelity stacks the images of a folder into batches, so all must have one
size. A reference folder such as the ImageNet validation set does not: its images
are brought to a common square size first (resized on the short side, then
centre-cropped), by torch-fidelity's own ``samples_resize_and_crop`` where the
installed version has it, otherwise into a temporary folder.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image, UnidentifiedImageError

from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.inputs import as_seen, list_images

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"  # torchvision's, for precision/recall
DEFAULT_SIZE = 299  # Inception's input size, for folders whose samples do not share one square size
_NETWORK_WORDS = ("urlopen", "download", "connection", "resolve", "network", "http", "unreachable", "timed out")


def torch_fidelity():
    """The optional package, or the one-line instruction to install it."""
    try:
        return importlib.import_module("torch_fidelity")
    except ImportError:
        raise UsageError("FID needs the optional torch-fidelity package: pip install 'rcdm[fid]'") from None


def image_sizes(folder: Path) -> set[tuple[int, int]]:
    """The (width, height) of every image under ``folder`` (headers only)."""
    sizes = set()
    for path in list_images(folder):
        try:
            with Image.open(path) as im:
                sizes.add(im.size)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise RcdmError(f"could not read {path}: {exc}") from None
    return sizes


def _common_size(sizes: set[tuple[int, int]]) -> int:
    """The size both folders are brought to: the samples' own when they are all one
    square size (RCDM writes 128 x 128), otherwise Inception's 299."""
    if len(sizes) == 1:
        (w, h), = sizes
        if w == h:
            return w
    return DEFAULT_SIZE


def resize_and_crop(image: Image.Image, size: int) -> Image.Image:
    """Short side to ``size`` (bicubic), then the central ``size`` x ``size`` square, in RGB."""
    image = as_seen(image)
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    image = image.resize(new, Image.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def prepare_folder(src: Path, dst: Path, size: int, progress: Callable[[int, int], None] | None = None) -> int:
    """Every image under ``src`` as a ``size`` x ``size`` PNG in ``dst`` (lossless, so
    the features see only the resize); returns how many."""
    paths = list_images(src)
    dst.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                resize_and_crop(im, size).save(dst / f"{i:07d}.png")
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise RcdmError(f"could not read {path}: {exc}") from None
        if progress is not None:
            progress(i + 1, len(paths))
    return len(paths)


def _supports_resize(tf) -> bool:
    """Whether the installed torch-fidelity resizes folders itself (0.4 and later)."""
    module = getattr(tf, "defaults", None)
    if module is None and getattr(tf, "__name__", None):
        try:
            module = importlib.import_module(f"{tf.__name__}.defaults")
        except ImportError:
            return False
    defaults = getattr(module, "DEFAULTS", None)
    return isinstance(defaults, dict) and "samples_resize_and_crop" in defaults


@dataclass
class FidInputs:
    """The two folders as torch-fidelity reads them: the originals, or resized copies,
    with any extra argument (torch-fidelity's own resizing)."""

    input1: str
    input2: str
    size: int
    extra: dict = field(default_factory=dict)
    resized: str | None = None  # how mixed sizes were handled: "torch-fidelity" or "temporary folder"


@contextlib.contextmanager
def uniform_inputs(
    tf, samples: Path, reference: Path, size: int | None = None, progress: Callable[[int, int], None] | None = None
) -> Iterator[FidInputs]:
    """Both folders at one square size; temporary copies are removed on exit."""
    sample_sizes = image_sizes(samples)
    size = size or _common_size(sample_sizes)
    pending = [f for f, sizes in ((samples, sample_sizes), (reference, image_sizes(reference))) if sizes != {(size, size)}]
    if not pending:
        yield FidInputs(str(samples), str(reference), size)
        return
    if _supports_resize(tf):
        yield FidInputs(str(samples), str(reference), size, {"samples_resize_and_crop": size}, "torch-fidelity")
        return
    with tempfile.TemporaryDirectory(prefix="rcdm-fid-") as tmp:
        inputs = []
        for name, folder in (("samples", samples), ("reference", reference)):
            if folder in pending:
                prepare_folder(folder, Path(tmp) / name, size, progress)
                inputs.append(str(Path(tmp) / name))
            else:
                inputs.append(str(folder))
        yield FidInputs(inputs[0], inputs[1], size, {}, "temporary folder")


def _failed_download(exc: BaseException, precision_recall: bool) -> str | None:
    """Which weights could not be fetched (the URL), judging by where the error came
    from: VGG-16 for precision/recall, Inception otherwise."""
    text = str(exc).lower()
    if not any(w in text for w in _NETWORK_WORDS) and not isinstance(exc, (ConnectionError, TimeoutError)):
        return None
    frames = " ".join(f.filename.lower() + " " + f.name.lower() for f in traceback.extract_tb(exc.__traceback__))
    if "vgg" in frames or "vgg" in text:
        return VGG16_URL
    if "inception" in frames or "inception" in text or not precision_recall:
        return INCEPTION_URL
    return f"{INCEPTION_URL} or {VGG16_URL}"


def check_folders(samples: Path, reference: Path, size: int | None = None) -> None:
    for folder in (samples, reference):
        if not folder.is_dir():
            raise UsageError(f"no such folder: {folder}")
        if len(list_images(folder)) < 2:
            raise UsageError(f"{folder} holds fewer than two images; FID needs many (thousands for stable numbers)")
    if size is not None and size < 16:
        raise UsageError(f"--size must be at least 16 pixels, got {size}")


def compute(tf, inputs: FidInputs, *, cuda: bool = False, precision_recall: bool = False) -> dict[str, float]:
    try:
        with warnings.catch_warnings():
            # DataLoader worker-count advice and the workers' own warnings (forked with these filters), on every run
            warnings.filterwarnings("ignore", category=UserWarning)
            metrics = tf.calculate_metrics(
                input1=inputs.input1, input2=inputs.input2, fid=True, prc=precision_recall, cuda=cuda, verbose=False,
                samples_find_deep=True, **inputs.extra,
            )
    except (OSError, RuntimeError, ValueError, AssertionError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        url = _failed_download(exc, precision_recall)
        if url is not None:
            raise RcdmError(
                f"could not get the feature network's weights ({text}); download {url} by other means "
                "into torch hub's checkpoints folder"
            ) from None
        raise RcdmError(f"FID failed: {text}") from None
    out = {"fid": float(metrics["frechet_inception_distance"])}
    if precision_recall:
        for key in ("precision", "recall", "f_score"):
            if key in metrics:
                out[key] = float(metrics[key])
    return out


def fid(
    samples: Path,
    reference: Path,
    *,
    cuda: bool = False,
    precision_recall: bool = False,
    size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """FID between the images of two folders (with ``precision_recall``, also
    precision, recall and F-score, which need VGG-16 weights too)."""
    check_folders(samples, reference, size)
    tf = torch_fidelity()
    with uniform_inputs(tf, samples, reference, size, progress) as inputs:
        out = compute(tf, inputs, cuda=cuda, precision_recall=precision_recall)
    out["samples"] = len(list_images(samples))
    out["reference"] = len(list_images(reference))
    out["size"] = inputs.size
    return out
