import pytest

from experiments import superposition as exp
from toylab import config
from toylab.config import ConfigError


def run(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        config.main_guard(lambda: exp.main([*argv, "--out", str(tmp_path / "run")]))
    err = capsys.readouterr().err.strip()
    return e.value.code, err


@pytest.mark.parametrize("argv, names", [
    (["train", "--intro-n-hidden", "6"], "intro_n_hidden"),
    (["train", "--basic-n-hidden", "21"], "basic_n_hidden"),
    (["train", "--basic-densities", "0.5", "1.5"], "basic_densities"),
    (["train", "--basic-linear-density", "0"], "basic_linear_density"),
    (["train", "--n-steps", "0"], "n_steps"),
    (["train", "--n-steps", "-5"], "n_steps"),
    (["train", "--lr", "0"], "lr"),
    (["train", "--lr", "-1e-3"], "lr"),
    (["train", "--preset", "nope"], "preset"),
    (["train", "--n-stepz", "10"], "--n-steps"),
    (["fly"], "stage"),
    (["train", "--n-steps", "1500"], "checkpoint_every"),
])
def test_bad_input_is_one_line_naming_the_field(argv, names, tmp_path, capsys):
    code, err = run(argv, tmp_path, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:") and names in err
    assert not (tmp_path / "run").exists()  # stopped before creating or compiling anything


def test_preset_and_overrides():
    args, cfg = config.parse_cli(exp.Config, exp.PRESETS, ["train", "--preset", "smoke", "--n-steps", "400",
                                                         "--basic-densities", "1", "0.1"], "x", "")
    assert args.stage == "train" and args.preset == "smoke"
    assert cfg.n_steps == 400 and cfg.basic_densities == (1.0, 0.1)
    assert cfg.batch_size == exp.PRESETS["smoke"].batch_size


def test_config_json_round_trip():
    cfg = exp.PRESETS["smoke"]
    assert config.from_dict(exp.Config, config.to_dict(cfg)) == cfg
    assert config.config_hash(cfg) != config.config_hash(exp.PRESETS["paper"])


def test_paper_preset_is_the_notebook_recipe():
    cfg = exp.PRESETS["paper"]
    assert (cfg.n_steps, cfg.batch_size, cfg.lr, cfg.weight_decay) == (10_000, 1024, 1e-3, 1e-2)
    assert (cfg.basic_n_features, cfg.basic_n_hidden, cfg.basic_importance_decay) == (20, 5, 0.7)
