import json
import math

import pytest
import torch
from safetensors.torch import load_file

from helpers import rel_err
from rcdm_cli.checkpoint.flags import parse_official_flags
from rcdm_cli.diffusion import PRESETS, UNet, UNetConfig, count_parameters
from rcdm_cli.diffusion.layers import AttentionBlock


def _tiny_reference(reference_dir):
    meta = json.loads((reference_dir / "official-unet-tiny.json").read_text())
    tensors = load_file(str(reference_dir / "official-unet-tiny.safetensors"))
    flags = meta["official_flags"]
    flag_str = " ".join(f"--{k} {v}" for k, v in flags.items() if k != "ssl_dim")
    config = parse_official_flags(flag_str, rep_dim=flags["ssl_dim"]).unet
    state = {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    return meta, tensors, config, state


def test_reproduces_official_tiny_unet(reference_dir):
    meta, tensors, config, state = _tiny_reference(reference_dir)
    model = UNet(config).eval()
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == meta["keys"]
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(tensors["input.x"], tensors["input.t"], tensors["input.feat"])
    assert out.shape == (2, 6, 32, 32)
    assert rel_err(out, tensors["expected.output"]) < 1e-5


@pytest.mark.parametrize("rep_dim", [2048, 256])
def test_rcdm_128_has_the_released_keys_and_shapes(reference_dir, rep_dim):
    ref = json.loads((reference_dir / f"official-unet-128-ssl{rep_dim}-keys.json").read_text())
    with torch.device("meta"):
        model = UNet(PRESETS["rcdm-128"].unet.with_rep_dim(rep_dim))
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(keys) == list(ref["keys"])  # same order too, as in the released files
    assert keys == ref["keys"]
    assert count_parameters(model) == ref["n_params"]


def test_released_flag_string_gives_the_rcdm_128_preset():
    flags = (
        "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 128 "
        "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 "
        "--resblock_updown True --use_fp16 False --use_scale_shift_norm True"
    )
    parsed = parse_official_flags(flags, rep_dim=2048)
    assert parsed.unet == PRESETS["rcdm-128"].unet.with_rep_dim(2048)
    assert parsed.diffusion == PRESETS["rcdm-128"].diffusion


def _einsum_attention(qkv: torch.Tensor, heads: int, new_order: bool) -> torch.Tensor:
    """The textbook computation of the released models' attention, for comparison."""
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    if new_order:
        q, k, v = qkv.chunk(3, dim=1)
        q, k, v = (z.reshape(bs * heads, ch, length) for z in (q, k, v))
    else:
        q, k, v = qkv.reshape(bs * heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    return torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)


@pytest.mark.parametrize("new_order", [False, True])
def test_sdpa_attention_computes_the_original_function(new_order):
    torch.manual_seed(1)
    block = AttentionBlock(64, num_heads=4, new_order=new_order)
    torch.nn.init.normal_(block.proj_out.weight, std=0.2)
    x = torch.randn(2, 64, 8, 8)
    flat = x.reshape(2, 64, -1)
    expected = flat + block.proj_out(_einsum_attention(block.qkv(block.norm(flat)), 4, new_order))
    assert rel_err(block(x), expected.reshape(x.shape)) < 1e-6


def test_head_count_from_head_channels():
    assert AttentionBlock(256, num_heads=4, num_head_channels=64).num_heads == 4
    assert AttentionBlock(512, num_heads=4, num_head_channels=64).num_heads == 8


def _randomised_tiny(rep_dim=16, **kw) -> UNet:
    torch.manual_seed(0)
    model = UNet(PRESETS["tiny"].unet.with_rep_dim(rep_dim), **kw)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised output layers would hide wiring
            p.normal_(0, 0.05)
    return model


def test_activation_checkpointing_gives_same_output_and_gradients():
    plain = _randomised_tiny()
    ckpt = _randomised_tiny(activation_checkpointing=True)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([5, 900])
    rep = torch.randn(2, 16)
    out_a = plain(x, t, rep)
    out_b = ckpt(x, t, rep)
    assert torch.allclose(out_a, out_b, atol=1e-6)
    out_a.square().mean().backward()
    out_b.square().mean().backward()
    for (name, pa), pb in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6, rtol=1e-4), name


def test_representation_changes_the_output_and_is_checked():
    model = _randomised_tiny().eval()
    x = torch.randn(1, 3, 32, 32)
    t = torch.tensor([100])
    with torch.no_grad():
        a = model(x, t, torch.zeros(1, 16))
        b = model(x, t, torch.ones(1, 16))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="16"):
        model(x, t, torch.zeros(1, 8))
    with pytest.raises(ValueError, match="pass rep"):
        model(x, t)


def test_unconditional_unet_has_no_ssl_emb():
    model = UNet(PRESETS["tiny"].unet)
    assert not any(k.startswith("ssl_emb") for k in model.state_dict())
    out = model(torch.randn(1, 3, 32, 32), torch.tensor([3]))
    assert out.shape == (1, 6, 32, 32)


def test_conv_resampling_layout_when_resblock_updown_is_off():
    config = UNetConfig(
        image_size=32, model_channels=32, num_res_blocks=1, attention_resolutions=(8,),
        channel_mult=(1, 2), resblock_updown=False, rep_dim=4,
    )
    model = UNet(config)
    keys = model.state_dict()
    assert "input_blocks.2.0.op.weight" in keys  # strided conv downsample
    assert "output_blocks.1.1.conv.weight" in keys  # conv upsample (no attention at this size)
    out = model(torch.randn(1, 3, 32, 32), torch.tensor([0]), torch.randn(1, 4))
    assert out.shape == (1, 6, 32, 32)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds(name):
    preset = PRESETS[name]
    with torch.device("meta"):
        model = UNet(preset.unet.with_rep_dim(2048))
    assert count_parameters(model) > 1e6
