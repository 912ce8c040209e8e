"""The fast paths (autocast, channels-last, torch.compile with its fallback, CUDA
graphs, fused attention) against the plain float32 path they replace."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import rel_err
from rcdm_cli.acceleration import CompiledOrEager, Speed, autocast
from rcdm_cli.checkpoint.resolve import resolve_checkpoint
from rcdm_cli.checkpoint.rundir import RunDir
from rcdm_cli.checkpoint.store import load_checkpoint
from rcdm_cli.cli.app import run
from rcdm_cli.diffusion import PRESETS, UNet
from rcdm_cli.diffusion.layers import AttentionBlock
from rcdm_cli.errors import UsageError
from rcdm_cli.pipeline.model import RCDMModel
from rcdm_cli.pipeline.sampling import SamplingOptions, check_request, sample_representations

# bf16 keeps 8 significant bits (unit roundoff 2^-8 = 0.4%); through the tiny UNet's
# dozens of layers, errors of a few tenths of a percent add up to about 1%.
BF16_TOLERANCE = 2e-2


@pytest.fixture(autouse=True)
def _warnings(caplog):
    """The library logs under ``rcdm.*``, which the CLI may have detached from the root."""
    logger = logging.getLogger("rcdm")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield
    logger.removeHandler(caplog.handler)


def _unet(rep_dim=16, seed=0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(PRESETS["tiny"].unet.with_rep_dim(rep_dim))
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised output layers would hide errors
            p.normal_(0, 0.05)
    return model.eval()


def _inputs(batch=2, rep_dim=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 3, 32, 32, generator=gen),
        torch.tensor([5, 700][:batch] + [300] * max(0, batch - 2)),
        torch.randn(batch, rep_dim, generator=gen),
    )


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return resolve_checkpoint(str(tiny_checkpoint))


def _model(tiny_model) -> RCDMModel:
    return RCDMModel.from_checkpoint(tiny_model, "cpu")


# --- precision --------------------------------------------------------------------------------


def test_bf16_autocast_stays_within_bf16_error_of_fp32():
    model, (x, t, rep) = _unet(), _inputs()
    with torch.no_grad():
        exact = model(x, t, rep)
        with autocast("cpu", "bf16"):
            low = model(x, t, rep)
    assert low.dtype == torch.bfloat16
    err = rel_err(low.float(), exact)
    assert 1e-4 < err < BF16_TOLERANCE  # really ran in bf16, and not too far off


def test_bf16_training_gradients_stay_within_bf16_error_of_fp32():
    model, (x, t, rep) = _unet(), _inputs()
    model.train()
    model(x, t, rep).float().square().mean().backward()
    exact = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with autocast("cpu", "bf16"):
        out = model(x, t, rep)
    out.float().square().mean().backward()
    flat = lambda g: torch.cat([v.flatten() for v in g.values()])
    assert rel_err(flat({n: p.grad for n, p in model.named_parameters()}), flat(exact)) < 3 * BF16_TOLERANCE


def test_bf16_samples_follow_the_fp32_ones(tiny_model):
    """The sampler state stays in float32, so a deterministic sampler's bf16 result
    differs from the float32 one only by the network's rounding."""
    reps = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    model = _model(tiny_model)
    options = SamplingOptions(sampler="dpm++2m", steps="8", batch_size=2)
    exact = sample_representations(model, reps, 2, options).samples
    low = sample_representations(model, reps, 2, SamplingOptions(**{**options.__dict__, "precision": "bf16"})).samples
    assert model.speed == Speed(precision="bf16")
    assert 0 < rel_err(low, exact) < BF16_TOLERANCE


def test_precision_is_checked_before_any_work(tiny_model):
    meta = tiny_model.meta
    with pytest.raises(UsageError, match="fp32, bf16, fp16"):
        check_request(meta, None, 1, SamplingOptions(precision="fp8"))
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        check_request(meta, None, 1, SamplingOptions(precision="fp16"), "cpu")


def test_cli_refuses_fp16_on_the_cpu(capsys, tiny_checkpoint, tmp_path):
    code = run(["--device", "cpu", "sample", "-c", str(tiny_checkpoint), "--rep", "random", "-n", "1",
                "--precision", "fp16", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "fp16 needs a GPU" in err
    assert not (tmp_path / "s").exists()


# --- memory format ----------------------------------------------------------------------------


def test_channels_last_gives_the_contiguous_output_and_gradients():
    plain, (x, t, rep) = _unet(), _inputs()
    nhwc = _unet().to(memory_format=torch.channels_last)
    assert nhwc.state_dict().keys() == plain.state_dict().keys()
    out_a = plain(x, t, rep)
    out_b = nhwc(x.contiguous(memory_format=torch.channels_last), t, rep)
    assert rel_err(out_b, out_a) < 1e-5
    out_a.square().mean().backward()
    out_b.square().mean().backward()
    # Biases that feed a GroupNorm of one channel per group have a zero gradient up to
    # cancellation, so errors are measured against the gradient's overall scale.
    scale = max(p.grad.abs().max().item() for p in plain.parameters())
    for (name, pa), pb in zip(plain.named_parameters(), nhwc.parameters()):
        assert (pb.grad - pa.grad).abs().max().item() < 1e-5 * scale, name


def test_model_switches_memory_format_and_back(tiny_model):
    model = _model(tiny_model)
    weight = model.unet.input_blocks[0][0].weight
    model.accelerate(Speed(channels_last=True))
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    model.accelerate(None)
    assert weight.is_contiguous()


# --- torch.compile and its fallback -------------------------------------------------------------------


def _failing_at_call(module, **options):
    def compiled(*args, **kwargs):
        raise RuntimeError("backend compiler failed: no C compiler found\nmore details")

    return compiled


def _failing_at_compile(module, **options):
    raise RuntimeError("torch.compile is not supported on this platform")


@pytest.mark.parametrize("compiler", [_failing_at_call, _failing_at_compile])
def test_failed_compilation_falls_back_to_eager_with_a_warning(monkeypatch, caplog, tiny_model, compiler):
    monkeypatch.setattr(torch, "compile", compiler)
    reps = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    options = SamplingOptions(sampler="dpm++2m", steps="4", batch_size=2)
    exact = sample_representations(_model(tiny_model), reps, 2, options).samples
    model = _model(tiny_model)
    fast = sample_representations(model, reps, 2, SamplingOptions(**{**options.__dict__, "compile": True})).samples
    assert torch.equal(fast, exact)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "continuing without compilation" in warnings[0]
    assert "\n" not in warnings[0]
    assert not model._network.active


def test_the_callers_own_errors_are_not_taken_for_compilation_failures(caplog):
    calls = []

    def compiled(x):
        calls.append(x)
        return x * 2

    wrapped = CompiledOrEager(torch.nn.Identity(), compiler=lambda module, **kw: compiled)
    assert torch.equal(wrapped(torch.ones(2)), torch.full((2,), 2.0))

    def module(x):
        raise ValueError("representation has 3 values, the model expects 8")

    strict = CompiledOrEager(module, compiler=lambda m, **kw: m)
    with pytest.raises(ValueError, match="expects 8"):
        strict(torch.ones(1))
    assert strict.active and not caplog.records


# --- attention -------------------------------------------------------------------------------------


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_qualifies_for_the_fused_kernel(new_order):
    """SDPA falls back silently to its unfused path when q/k/v are laid out wrongly;
    forcing the flash backend turns that into an error."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    block = AttentionBlock(64, num_heads=4, new_order=new_order)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    expected = block(x)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = block(x)
        out.sum().backward()
    assert rel_err(out, expected) < 1e-6


# --- CUDA graphs (run only where CUDA is) -----------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_replay_the_eager_network(monkeypatch, tiny_model):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 rounds at 1e-3
    model = RCDMModel.from_checkpoint(tiny_model, "cuda")
    x, t, _ = _inputs()
    reps = torch.randn(2, 8)
    plain = model.denoiser(reps)(x.cuda(), t.cuda())
    model.accelerate(Speed(precision="fp32", channels_last=True))
    denoise = model.denoiser(reps)
    first = denoise(x.cuda(), t.cuda())
    again = denoise(x.cuda() * 0.5, t.cuda())
    assert len(model._graphs) == 1
    assert rel_err(first, plain) < 1e-4
    assert not torch.allclose(first, again)
    assert torch.equal(denoise(x.cuda(), t.cuda()), first)  # a replay, not a stale output


# --- training -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _train(tmp_path, images, name, *extra):
    out = tmp_path / name
    args = ["train", str(images), "--encoder", "random", "--preset", "tiny", "--workers", "0", "--cache-features",
            "--out", str(out), "--steps", "2", "--batch-size", "2", "--save-every", "2", "--sample-every", "100",
            "--json", *extra]
    assert run(args) == 0
    return load_checkpoint(RunDir(out).step_dir(2) / "model.safetensors", weights="model")[1], out


@pytest.mark.slow
def test_training_with_a_failing_compile_and_channels_last_matches_plain_training(monkeypatch, capsys, tmp_path, images):
    plain, _ = _train(tmp_path, images, "plain")
    monkeypatch.setattr(torch, "compile", _failing_at_call)
    fast, out = _train(tmp_path, images, "fast", "--compile", "--channels-last")
    assert "torch.compile failed" in capsys.readouterr().err  # the CLI logs to stderr
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["compile"] and config["channels_last"]
    assert plain.keys() == fast.keys()
    for key in plain:
        assert fast[key].is_contiguous()
        assert torch.allclose(fast[key], plain[key], rtol=1e-3, atol=1e-5), key
