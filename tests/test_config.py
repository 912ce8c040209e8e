import pytest

from rcdm_cli.diffusion import PRESETS, DiffusionConfig, UNetConfig, get_preset, parse_official_flags, to_official_flags
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
    ],
)
def test_bad_flags_name_the_problem(flags, message):
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
