"""Config: YAML round trip, CLI-style overrides, and one clear error per bad value."""

import pytest

from difforge.config import ConfigError, RunConfig, config_from_dict, load_config, save_config, settings_to_dict


def test_yaml_round_trip(tmp_path):
    cfg = config_from_dict({"train": {"lr": 1e-3, "max_steps": 5}, "model": {"preset": "tiny"}, "out": "runs/x"})
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_apply_on_top_of_a_file(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: 0.01\n  batch_size: 32\n")
    base = load_config(tmp_path / "c.yaml")
    cfg = config_from_dict({"train": {"batch_size": 64}}, base)
    assert cfg.train.lr == 0.01 and cfg.train.batch_size == 64
    assert cfg.data == RunConfig().data


def test_int_accepted_for_float():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0


def test_settings_become_the_nested_dict_of_a_yaml_file():
    d = settings_to_dict(["train.lr=0.5", "train.wandb=true", "data.image_size=null", "model.preset=tiny",
                          "out=runs/x", "train.lr=1e-3"])
    assert d == {"train": {"lr": 1e-3, "wandb": True}, "data": {"image_size": None}, "model": {"preset": "tiny"},
                 "out": "runs/x"}  # the later train.lr wins; 1e-3 (text to YAML 1.1) is a number for a float key
    assert settings_to_dict(["train.device=1e-3"]) == {"train": {"device": "1e-3"}}  # a text key keeps text
    assert config_from_dict(d).train.lr == 1e-3


@pytest.mark.parametrize(
    "d, message",
    [
        ({"trian": {}}, r"unknown config section\(s\) \['trian'\]"),
        ({"train": {"lr_max": 1.0}}, r"unknown key\(s\) \['lr_max'\] in section 'train'"),
        ({"train": {"batch_size": "big"}}, r"train.batch_size must be int, got 'big'"),
        ({"train": {"batch_size": 1.5}}, r"train.batch_size must be int"),
        ({"train": {"wandb": "yes"}}, r"train.wandb must be bool"),
        ({"train": {"precision": "fp8"}}, r"unknown precision 'fp8'"),
        ({"train": {"batch_size": 0}}, r"batch_size must be >= 1"),
        ({"diffusion": {"schedule": "sqrt"}}, r"unknown schedule 'sqrt'"),
        ({"model": {"preset": "gigantic"}}, r"unknown model 'gigantic'"),
        ({"data": {"dataset": "folder"}}, r"needs a path"),
        ({"data": {"dataset": "cifar"}}, r"unknown dataset 'cifar'"),
        ({"model": {"label_dropout": 1.0}}, r"label_dropout must be in \[0, 1\)"),
        ({"train": {"max_steps": None, "epochs": 0}}, r"epochs must be >= 1"),
    ],
)
def test_bad_values_get_one_clear_error(d, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(d)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.yaml")


def test_the_config_names_the_text_encoders_the_models_have():
    from difforge.config import TEXT_ENCODERS
    from difforge.models import conditioning

    assert TEXT_ENCODERS == conditioning.TEXT_ENCODERS
