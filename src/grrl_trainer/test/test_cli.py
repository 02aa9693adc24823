"""The offline and data CLIs take their flags from the config dataclasses: every field has its
flag, with its docstring as help; grrl-reproduce's sizes supply defaults and flags given win."""
from __future__ import annotations

import dataclasses

import pytest

from grrl_critic.filtering import FilterConfig
from grrl_tools.config_cli import field_docs, walk
from grrl_trainer import reproduce
from grrl_trainer.data import cli as data_cli
from grrl_trainer.data.collect import CollectConfig
from grrl_trainer.evaluation import evaluate, imitation
from grrl_trainer.offline import bc, critic_train, curve, pipeline
from grrl_trainer.online import trainer

CLIS = {
    "grrl-train-bc": (bc.main, [], [(bc.BCConfig(), ())]),
    "grrl-curve": (curve.main, [], [(curve.CurveConfig(), ()), (bc.BCConfig(), ())]),
    "grrl-critic train": (critic_train.main, ["train"],
                          [(critic_train.CriticRunConfig(), critic_train.TRAIN_FLATTEN)]),
    "grrl-critic filter": (critic_train.main, ["filter"], [(FilterConfig(), ())]),
    "grrl-offline": (pipeline.main, [], [(pipeline.OfflineConfig(), ())]),
    "grrl-reproduce": (reproduce.main, [], [(reproduce.ReproduceConfig(), ())]),
    "grrl-data collect": (data_cli.main, ["collect"],
                          [(data_cli.CollectRun(), ()), (CollectConfig(), data_cli.COLLECT_FLATTEN)]),
    "grrl-data convert": (data_cli.main, ["convert"], [(CollectConfig(), ())]),
    "grrl-eval": (evaluate.main, [], [(evaluate.EvalConfig(), evaluate.CLI_FLATTEN)]),
    "grrl-eval imitation": (evaluate.main, ["imitation"], [(imitation.ImitationConfig(), ())]),
    "grrl-online": (trainer.main, [], [(trainer.OnlineConfig(), ()), (trainer.RolloutConfig(), ())]),
}


@pytest.mark.parametrize("name", sorted(CLIS))
def test_help_shows_every_config_field(name, capsys):
    main, sub, configs = CLIS[name]
    with pytest.raises(SystemExit) as exc:
        main(sub + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    text, packed = " ".join(out.split()), "".join(out.split())     # (help lines are wrapped)
    assert "--quiet" in text
    skip = data_cli.CONVERT_SKIP if name == "grrl-data convert" else ()
    flags = [(flag, doc) for config, flatten in configs
             for _path, flag, _typ, _default, doc in walk(config, flatten, skip)]
    assert flags
    for flag, doc in flags:
        assert f"--{flag} " in text, flag
        if doc:
            assert "".join(doc.split()) in packed, (flag, doc)


@pytest.mark.parametrize("cls", [bc.BCConfig, curve.CurveConfig, critic_train.CriticRunConfig, pipeline.OfflineConfig,
                                 reproduce.ReproduceConfig, CollectConfig, FilterConfig,
                                 data_cli.CollectRun, evaluate.EvalConfig, imitation.ImitationConfig,
                                 trainer.OnlineConfig, trainer.RolloutConfig])
def test_every_field_is_documented(cls):
    names = {f.name for f in dataclasses.fields(cls)}
    assert names - set(field_docs(cls)) == set()


def configs_of(monkeypatch, argv: list[str]) -> reproduce.ReproduceConfig:
    seen = []

    def fake(out, cfg, data=None, progress=True):
        seen.append(cfg)
        raise KeyboardInterrupt
    monkeypatch.setattr(reproduce, "reproduce", fake)
    assert reproduce.main(["--out", "unused", "--quiet"] + argv) == 130
    return seen[0]


def test_reproduce_sizes_supply_defaults_and_flags_given_win(monkeypatch):
    base = reproduce.ReproduceConfig()
    assert configs_of(monkeypatch, []) == base
    smoke = configs_of(monkeypatch, ["--size", "smoke"])
    assert smoke == dataclasses.replace(base, **reproduce.SIZES["smoke"])
    # a flag given wins over its size, also when it repeats the default size's value
    mixed = configs_of(monkeypatch, ["--size", "smoke", "--bc-steps", "5",
                                     "--eval-episodes", str(base.eval_episodes)])
    assert mixed == dataclasses.replace(smoke, bc_steps=5, eval_episodes=base.eval_episodes)
    # images: the image model unless a preset is named
    assert configs_of(monkeypatch, ["--observation", "images"]).preset == "tiny-task"
    assert configs_of(monkeypatch, ["--observation", "images", "--preset", base.preset]).preset \
        == base.preset
