import pytest

from rcdm_cli.checkpoint.flags import parse_official_flags, to_official_flags
from rcdm_cli.diffusion import PRESETS, DiffusionConfig, UNetConfig, get_preset
from rcdm_cli.errors import UsageError


def test_flag_syntax_variants():
    parsed = parse_official_flags(
        ["--image_size=64", "--num_channels", "64", "--learn_sigma", "yes", "--resblock_updown", "1",
         "--feat_cond", "--type_model", "dino", "--use_head", "True", "--lr", "1e-4", "--batch_size", "8"]
    )
    assert parsed.unet.image_size == 64 and parsed.unet.model_channels == 64
    assert parsed.unet.channel_mult == (1, 2, 3, 4)
    assert parsed.unet.learn_sigma and parsed.diffusion.learn_sigma and parsed.unet.resblock_updown
    assert parsed.type_model == "dino" and parsed.use_head is True
    assert parsed.ignored == ("lr", "batch_size")


def test_a_repeated_flag_takes_its_last_value():
    parsed = parse_official_flags("--image_size 128 --num_channels 256 --num_channels 128")
    assert parsed.unet.model_channels == 128


def test_guided_diffusion_defaults_apply_to_missing_flags():
    parsed = parse_official_flags("--image_size 32 --channel_mult 1,2,2 --num_channels 64")
    assert parsed.unet.attention_resolutions == (16, 8)
    assert parsed.unet.learn_sigma is False and parsed.unet.out_channels == 3
    assert parsed.unet.resblock_updown is False
    assert parsed.diffusion == DiffusionConfig(learn_sigma=False)


@pytest.mark.parametrize(
    "flags, message",
    [
        ("--image_size 128 --num_chanels 256", "--num_chanels is not"),
        ("--class_cond True", "class-conditional"),
        ("--learn_sigma maybe", "True or False"),
        ("--num_channels lots", "expects int"),
        ("--image_size 48", "no default --channel_mult"),
        ("image_size 64", "expected a flag"),
        ("--noise_schedule quadratic", "unknown noise schedule"),
        ("--image_size 32 --channel_mult 1,2,2 --num_channels 48", "multiple of 32"),
        ("--attention_resolutions 32;16", "attention_resolutions"),
        ("--image_size 32 --channel_mult 1,2,2", None),  # guided-diffusion has no default for 32 either: fine with one
        ("--image_size 32", "no default --channel_mult"),
        ("--num_heads 0", "num_heads must be positive"),
        ("--num_head_channels 0", "num_head_channels must be -1"),
        ("--num_heads 3", "num_heads 3 does not divide the 512 channels of the attention at level 3"),
        ("--num_heads_upsample 5", "num_heads_upsample 5 does not divide"),
        ("--dropout 2", "dropout must lie in"),
        ("--timestep_respacing bogus", "bad step spec 'bogus'"),
        ("--image_size 64 --comment 'unclosed", "cannot split the flags"),
    ],
)
def test_bad_flags_name_the_problem(flags, message):
    if message is None:
        parse_official_flags(flags)
        return
    with pytest.raises(UsageError, match=message):
        parse_official_flags(flags)


def test_official_flags_round_trip_every_preset():
    for preset in PRESETS.values():
        unet = preset.unet.with_rep_dim(256)
        parsed = parse_official_flags(to_official_flags(unet, preset.diffusion), rep_dim=256)
        assert parsed.unet == unet
        assert parsed.diffusion == preset.diffusion


def test_config_dict_round_trip_and_unknown_keys():
    unet = PRESETS["rcdm-128"].unet.with_rep_dim(2048)
    assert UNetConfig.from_dict(unet.to_dict()) == unet
    with pytest.raises(UsageError, match="bogus"):
        UNetConfig.from_dict({**unet.to_dict(), "bogus": 1})
    with pytest.raises(UsageError, match="unknown preset 'huge'.*rcdm-128"):
        get_preset("huge")


# The sampling flags of guided-diffusion's README for its 64x64 and 256x256 ImageNet
# models, with class conditioning replaced by representation conditioning.
ADM_64 = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
    "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
    "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True"
)
ADM_256 = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True "
    "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
    "--use_fp16 True --use_scale_shift_norm True"
)


@pytest.mark.parametrize("preset, flags", [("rcdm-64", ADM_64), ("rcdm-256", ADM_256)])
def test_larger_presets_are_adm_published_settings(preset, flags):
    parsed = parse_official_flags(flags, rep_dim=2048)
    assert parsed.unet == PRESETS[preset].unet.with_rep_dim(2048)
    assert parsed.diffusion == PRESETS[preset].diffusion


def test_official_flags_are_what_the_scripts_accept():
    text = to_official_flags(PRESETS["rcdm-128"].unet, PRESETS["rcdm-128"].diffusion)
    assert "sigma_small" not in text and "--channel_mult 1,1,2,3,4 " in text


def test_rcdm_script_flags_are_understood():
    parsed = parse_official_flags("--image_size 64 --feat_cond --comment run-3 --ssl_dim 256")
    assert parsed.unet.rep_dim == 256 and parsed.ignored == ("comment",)
    unconditional = parse_official_flags("--image_size 64 --feat_cond False", rep_dim=256)
    assert unconditional.unet.rep_dim is None
