#!/usr/bin/env python
"""Train the miniature encoders that ship with rcdm (``scenes-simclr``,
``scenes-supervised``) on the procedural scenes, and measure what they keep.

Why these exist: the paper's findings (an SSL backbone keeps scale, grayscale status
and background colour; its projector head discards what the augmentations vary; a
supervised network constrains appearance less) can only be checked offline on a
representation that was trained for real. A small CNN trained here in minutes on
2 CPU cores, on scenes whose factors are known, makes that possible.

Everything is reproducible: fixed seeds, deterministic CPU ops, a fixed thread
count, and a pool of scenes rendered once from a fixed seed. Augmentations are done
batched in torch (affine grids for crops, colour operations on tensors) so a step
costs little more than the network's own forward and backward pass.

    python scripts/train_miniature.py --encoder simclr --out plugins/weights
    python scripts/train_miniature.py --encoder supervised --out plugins/weights
    python scripts/train_miniature.py --probe-only plugins/weights/scenes-simclr.safetensors

After training, the linear probes (held-out scenes, ``rcdm_cli.evaluation.probe``)
and the invariance measure of ``rcdm evaluate invariance`` run on the result, and
everything goes into ``<name>.json`` beside the weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rcdm_cli.scenes import BACKGROUNDS, COLOURS, POSITION_RANGE, SHAPES, SIZE_RANGE, make_scenes
from rcdm_cli.encoders import Encoder, get_registry
from rcdm_cli.plugin import load_strict, load_torch_file
from rcdm_cli.evaluation.invariance import invariance
from rcdm_cli.evaluation.probe import accuracy, fit_probe
from rcdm_plugins.miniature import PREPROCESSING, SceneNet, file_sha256, simclr_net, supervised_net

log = logging.getLogger("train_miniature")

# Seeds of the scene sets: training pool, probe scenes, invariance scenes. Distinct so
# that no probe or invariance scene was seen in training.
POOL_SEED = 1000
PROBE_SEED = 2000
INVARIANCE_SEED = 3000

FACTORS = ("shape", "colour", "background", "gray", "size", "x", "y")
BINS = 3
INVARIANCE_AUGMENTATIONS = ("color-jitter", "grayscale", "crop-0.5", "hflip", "vshift")
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL and torchvision


# --- data ------------------------------------------------------------------------------------


def render_pool(count: int, seed: int, size: int = 64, cache: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` scenes as uint8 (N, 3, size, size) and their shape labels. Rendered
    once at 64 px so that crops are resampled from more pixels than they end up
    with (a full-image crop to 32 px is then exactly the 2x2 box filter the
    encoder's preprocessing applies)."""
    if cache is not None:
        path = cache / f"pool-{count}-{seed}-{size}.npz"
        if path.is_file():
            data = np.load(path)
            return torch.from_numpy(data["images"]), torch.from_numpy(data["shapes"])
    scenes = make_scenes(count, seed=seed, size=size)
    images = np.stack([np.asarray(im, dtype=np.uint8) for im, _ in scenes]).transpose(0, 3, 1, 2).copy()
    shapes = np.array([SHAPES.index(f["shape"]) for _, f in scenes], dtype=np.int64)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=images, shapes=shapes)
    return torch.from_numpy(images), torch.from_numpy(shapes)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def resized_crop(x: torch.Tensor, out: int, scale: tuple[float, float], g: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random resized crop (area fraction in ``scale``, aspect ratio 3/4 to 4/3) and
    horizontal flip (p = 0.5), resampled bilinearly to ``out`` px in one grid_sample."""
    n = x.shape[0]
    area = _uniform(n, *scale, g)
    ratio = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3), g))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=g) - 1) * (1 - w)
    cy = (2 * torch.rand(n, generator=g) - 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [n, 3, out, out], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = (
        (v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q),
    )
    out = torch.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(choices):
        m = (i == k).unsqueeze(1)
        out = torch.where(m, torch.stack((rr, gg, bb), dim=1), out)
    return out


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * x + (1 - factor.view(-1, 1, 1, 1)) * other).clamp(0, 1)


def _brightness(x, f):
    return _blend(x, torch.zeros_like(x), f)


def _contrast(x, f):
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), f)


def _saturation(x, f):
    return _blend(x, grayscale(x).expand_as(x), f)


def _hue(x, f):
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + f.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(hsv).clamp(0, 1)


def color_jitter(x: torch.Tensor, strength: float, hue: float, p: float, g: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter(strength, strength, strength, hue) applied with
    probability ``p``, each image with its own factors and its own order of the four
    operations."""
    n = x.shape[0]
    applied = torch.rand(n, generator=g) < p
    factors = [
        _uniform(n, max(0.0, 1 - strength), 1 + strength, g),
        _uniform(n, max(0.0, 1 - strength), 1 + strength, g),
        _uniform(n, max(0.0, 1 - strength), 1 + strength, g),
        _uniform(n, -hue, hue, g),
    ]
    order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)
    ops = (_brightness, _contrast, _saturation, _hue)
    x = x.clone()
    for slot in range(4):
        for k, op in enumerate(ops):
            m = applied & (order[:, slot] == k)
            if m.any():
                x[m] = op(x[m], factors[k][m])
    return x


def random_grayscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    m = (torch.rand(x.shape[0], generator=g) < p).view(-1, 1, 1, 1)
    return torch.where(m, grayscale(x).expand_as(x), x)


def random_blur(x: torch.Tensor, p: float, sigma: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """Gaussian blur (3x3 kernel at 32 px, sigma in pixels), per image, separable."""
    n, c, hgt, wid = x.shape
    s = _uniform(n, *sigma, g)
    m = torch.rand(n, generator=g) < p
    taps = torch.arange(-1, 2, dtype=x.dtype)
    k = torch.exp(-(taps[None] ** 2) / (2 * s[:, None] ** 2))
    k = k / k.sum(dim=1, keepdim=True)
    k = torch.where(m[:, None], k, torch.tensor([0.0, 1.0, 0.0]))
    k = k.repeat_interleave(c, dim=0)  # (n * c, 3)
    y = x.reshape(1, n * c, hgt, wid)
    y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, 3), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, 3, 1), groups=n * c)
    return y.view(n, c, hgt, wid)


def simclr_view(x: torch.Tensor, args, g: torch.Generator) -> torch.Tensor:
    v = resized_crop(x, 32, (args.crop_min, 1.0), g)
    v = color_jitter(v, args.jitter, args.hue, args.jitter_p, g)
    v = random_grayscale(v, args.gray_p, g)
    if args.blur > 0:
        v = random_blur(v, args.blur, (0.1, 1.0), g)
    return v


def normalize(x: torch.Tensor) -> torch.Tensor:
    return PREPROCESSING.normalize(x)


# --- training ----------------------------------------------------------------------------------


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick out the other view of its image among the
    2N - 1 others, by cosine similarity over ``temperature``."""
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat((torch.arange(n, 2 * n), torch.arange(0, n)))
    return F.cross_entropy(sim, target)


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def set_deterministic(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def train(args) -> tuple[SceneNet, dict]:
    set_deterministic(args.seed, args.threads)
    t0 = time.perf_counter()
    images, shapes = render_pool(args.pool, POOL_SEED, cache=args.pool_cache)
    log.info("pool of %d scenes ready in %.1f s", len(images), time.perf_counter() - t0)
    net = simclr_net(args.proj_dim) if args.encoder == "simclr" else supervised_net()
    net.train()
    net.to(memory_format=torch.channels_last)  # about twice as fast on CPU for these convolutions
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    g = torch.Generator().manual_seed(args.seed + 1)
    warmup = max(1, int(args.warmup * args.steps))
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup)
        idx = torch.randint(len(images), (args.batch_size,), generator=g)
        x = images[idx].float() / 255.0
        if args.encoder == "simclr":
            views = torch.cat((simclr_view(x, args, g), simclr_view(x, args, g)))
            views = normalize(views).contiguous(memory_format=torch.channels_last)
            loss = nt_xent(net.project(net.backbone(views)), args.temperature)
        else:
            v = normalize(resized_crop(x, 32, (args.crop_min, 1.0), g)).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net.project(net.backbone(v)), shapes[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            recent = float(np.mean(losses[-args.log_every:]))
            log.info(
                "step %d/%d  loss %.4f  lr %.2e  %.1f s", step + 1, args.steps, recent, opt.param_groups[0]["lr"],
                time.perf_counter() - start,
            )
    wall = time.perf_counter() - start
    net.to(memory_format=torch.contiguous_format).eval()
    record = {
        "steps": args.steps,
        "train_wall_seconds": round(wall, 1),
        "seconds_per_step": round(wall / args.steps, 3),
        "final_loss": losses[-1],
        "final_loss_mean_last_50": float(np.mean(losses[-50:])),
        "loss_curve": [round(float(np.mean(losses[i : i + 50])), 4) for i in range(0, len(losses), 50)],
    }
    return net, record


# --- measuring -----------------------------------------------------------------------------------


def factor_labels(factors: list[dict]) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Each factor as class indices and class names; size and position in
    ``BINS`` equal-width bins over the range they are drawn from."""

    def binned(key: str, lo: float, hi: float):
        edges = np.linspace(lo, hi, BINS + 1)
        v = np.array([f[key] for f in factors])
        idx = np.clip(np.floor((v - lo) / (hi - lo) * BINS), 0, BINS - 1).astype(np.int64)
        names = [f"{edges[i]:.2f}-{edges[i + 1]:.2f}" for i in range(BINS)]
        return torch.from_numpy(idx), names

    def categorical(key: str, names: list):
        return torch.tensor([names.index(f[key]) for f in factors]), [str(n) for n in names]

    return {
        "shape": categorical("shape", list(SHAPES)),
        "colour": categorical("colour", list(COLOURS)),
        "background": categorical("background", list(BACKGROUNDS)),
        "gray": categorical("gray", [False, True]),
        "size": binned("size", *SIZE_RANGE),
        "x": binned("x", *POSITION_RANGE),
        "y": binned("y", *POSITION_RANGE),
    }


def layers_of(net: SceneNet) -> list[str]:
    return ["backbone", net.head_name]


@torch.no_grad()
def features(net: SceneNet, images: list, batch: int = 250) -> dict[str, torch.Tensor]:
    """Every layer's representation, through the encoder's own preprocessing."""
    net.eval()
    out: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers_of(net)}
    for start in range(0, len(images), batch):
        x = normalize(PREPROCESSING.to_tensor(images[start : start + batch]))
        pooled = net.backbone(x)
        out["backbone"].append(pooled)
        out[net.head_name].append(net.project(pooled))
    return {k: torch.cat(v) for k, v in out.items()}


def probe_table(net: SceneNet, n_train: int = 2000, n_test: int = 1000, seed: int = PROBE_SEED) -> dict:
    """Linear-probe accuracy of each factor from each layer, on held-out scenes,
    with chance: the accuracy of always answering the training set's most frequent
    class."""
    scenes = make_scenes(n_train + n_test, seed=seed, size=64)
    feats = features(net, [im for im, _ in scenes])
    labels = factor_labels([f for _, f in scenes])
    table: dict = {"n_train": n_train, "n_test": n_test, "seed": seed, "chance": {}, "accuracy": {}}
    for factor in FACTORS:
        y, names = labels[factor]
        y_train, y_test = y[:n_train], y[n_train:]
        majority = int(torch.bincount(y_train, minlength=len(names)).argmax())
        table["chance"][factor] = round(float((y_test == majority).double().mean()), 4)
    for layer, f in feats.items():
        table["accuracy"][layer] = {}
        for factor in FACTORS:
            y, names = labels[factor]
            probe = fit_probe(f[:n_train], y[:n_train], names)
            table["accuracy"][layer][factor] = round(accuracy(probe, f[n_train:], y[n_train:])["top1"], 4)
    return table


def invariance_table(net: SceneNet, count: int = 200, seed: int = INVARIANCE_SEED) -> dict:
    """``rcdm evaluate invariance``'s measure (mean cosine similarity between a
    scene's representation and its augmented view's), on scenes rendered at 64 px."""
    name = "scenes-simclr" if net.head_name == "head" else "scenes-supervised"
    spec = get_registry().get(name).spec
    head = getattr(net, net.head_name)
    width = (head[-1] if isinstance(head, torch.nn.Sequential) else head).out_features
    layers = {"backbone": spec.layers["backbone"], net.head_name: (width, "")}
    encoder = Encoder(
        spec, net, name=name, layers=layers, preprocessing=PREPROCESSING, native_preprocessing=PREPROCESSING,
        source=None, weights_file=None, plugin="train_miniature",
    )
    images = [im for im, _ in make_scenes(count, seed=seed, size=64)]
    result = invariance(images, encoder, list(layers), list(INVARIANCE_AUGMENTATIONS))
    return {aug: {layer: round(v["mean"], 4) for layer, v in per.items()} for aug, per in result.items()}


def format_probe_table(table: dict) -> str:
    layers = list(table["accuracy"])
    lines = ["| factor | chance | " + " | ".join(layers) + " |", "|---|---|" + "---|" * len(layers)]
    for factor in FACTORS:
        row = [f"{table['accuracy'][layer][factor]:.3f}" for layer in layers]
        lines.append(f"| {factor} | {table['chance'][factor]:.3f} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_invariance_table(table: dict) -> str:
    layers = list(next(iter(table.values())))
    lines = ["| augmentation | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
    for aug, per in table.items():
        lines.append(f"| {aug} | " + " | ".join(f"{per[layer]:.3f}" for layer in layers) + " |")
    return "\n".join(lines)


def load_net(path: Path) -> SceneNet:
    """The network a weights file holds, told apart by its keys (``head.*`` or
    ``logits.*``) and, for a projector, its width."""
    state = load_torch_file(path)
    if "logits.weight" in state:
        net = supervised_net()
    else:
        net = simclr_net(state["head.3.weight"].shape[0])
    return load_strict(net, state, str(path)).eval()


# --- saving -------------------------------------------------------------------------------------------


def float_state(net: SceneNet) -> dict[str, torch.Tensor]:
    """The float32 tensors (batch-norm step counters left out: they only matter for
    training, and loading tolerates their absence)."""
    return {
        k: v.detach().to(torch.float32).contiguous().clone()
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def hyperparameters(args) -> dict:
    keys = [
        "encoder", "steps", "batch_size", "proj_dim", "seed", "lr", "weight_decay", "warmup", "temperature",
        "crop_min", "jitter", "hue", "jitter_p", "gray_p", "blur", "pool", "threads",
    ]
    hp = {k: getattr(args, k) for k in keys}
    if args.encoder == "supervised":
        for k in ("proj_dim", "temperature", "jitter", "hue", "jitter_p", "gray_p", "blur"):
            hp.pop(k)
    return hp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", choices=("simclr", "supervised"), default="simclr")
    parser.add_argument("--steps", type=int, default=None, help="default: 3000 (simclr), 1000 (supervised)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--proj-dim", type=int, default=32, help="width of the SimCLR head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (cosine, linear warm-up)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.05, help="share of the steps spent warming up")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--crop-min", type=float, default=0.2, help="smallest crop area of the random resized crop")
    parser.add_argument("--jitter", type=float, default=0.8, help="brightness/contrast/saturation strength")
    parser.add_argument("--hue", type=float, default=0.2)
    parser.add_argument("--jitter-p", type=float, default=0.8)
    parser.add_argument("--gray-p", type=float, default=0.2)
    parser.add_argument("--blur", type=float, default=0.0, help="probability of a Gaussian blur (0: none)")
    parser.add_argument("--pool", type=int, default=8000, help="scenes rendered for training")
    parser.add_argument("--pool-cache", type=Path, default=None, help="folder to keep the rendered pool in")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--name", default=None, help="file name stem (default: scenes-<encoder>)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for <name>.safetensors and <name>.json")
    parser.add_argument("--probe-only", type=Path, default=None, metavar="PATH", help="measure a weights file; no training")
    parser.add_argument("--no-invariance", action="store_true", help="skip the invariance measure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    if args.probe_only is not None:
        set_deterministic(args.seed, args.threads)
        net = load_net(args.probe_only)
        table = probe_table(net)
        print(format_probe_table(table))
        if not args.no_invariance:
            print()
            print(format_invariance_table(invariance_table(net)))
        return 0

    if args.steps is None:
        args.steps = 3000 if args.encoder == "simclr" else 1000
    name = args.name or f"scenes-{args.encoder}"
    args.out.mkdir(parents=True, exist_ok=True)
    net, record = train(args)
    weights = args.out / f"{name}.safetensors"
    save_file(float_state(net), str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # package data: readable by all, like the rest of the tree
    log.info("probing ...")
    t0 = time.perf_counter()
    table = probe_table(net)
    log.info("probes done in %.1f s\n%s", time.perf_counter() - t0, format_probe_table(table))
    inv = None
    if not args.no_invariance:
        inv = invariance_table(net)
        log.info("invariance (mean cosine similarity to the augmented view)\n%s", format_invariance_table(inv))
    out = {
        "name": name,
        "hyperparameters": hyperparameters(args),
        **record,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seed": args.seed,
        "data": {
            "pool": args.pool, "pool_seed": POOL_SEED, "rendered_px": 64, "trained_px": 32,
            "generator": "rcdm_cli.scenes.make_scenes",
        },
        "weights": weights.name,
        "sha256": file_sha256(weights),
        "bytes": weights.stat().st_size,
        "probe": table,
        "invariance": inv,
    }
    (args.out / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    log.info("wrote %s (sha256 %s) and %s.json", weights, out["sha256"], name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
