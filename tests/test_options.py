"""Command-line options generated from configuration dataclasses (sense_core.options)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from sense_core.options import add_options, config_from_args, option_dest


@dataclass
class Run:
    epochs: int = field(default=30, metadata={"help": "epochs at most"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak rate", "flag": "--lr"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads"})
    device: str = field(default="auto", metadata={"help": "device", "choices": ("auto", "cpu")})
    hidden: int = field(default=7, metadata={"help": "internal", "cli": False})


@dataclass
class Split:
    fractions: tuple[float, float, float] = field(
        default=(0.7, 0.15, 0.15), metadata={"help": "train,val,test shares"}
    )


@dataclass
class Config:
    name: str = field(default="ae", metadata={"help": "model name"})
    batch_norm: bool = field(default=True, metadata={"help": "batch normalisation"})
    terms: tuple[str, ...] = field(default=("recon",), metadata={"help": "loss terms"})
    pairs: list[list[int]] = field(default_factory=list, metadata={"help": "channel pairs"})
    run: Run = field(default_factory=Run)
    split: Split = field(default_factory=Split)


def parser_for(config=None, **options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_options(parser, config or Config(), **options)
    return parser


def help_text(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())  # one line, whatever the terminal width


def test_every_field_gets_an_option_in_a_group_per_nested_dataclass():
    parser = parser_for(group_title="model")
    text = parser.format_help()
    for flag in ("--name", "--batch-norm", "--no-batch-norm", "--terms", "--pairs", "--epochs"):
        assert flag in text, flag
    assert "--lr" in text and "--learning-rate" not in text  # metadata flag wins
    assert "--hidden" not in text  # cli: False
    titles = [group.title for group in parser._action_groups]
    assert {"model", "model run", "model split"} <= set(titles)
    run_group = next(g for g in parser._action_groups if g.title == "model run")
    assert {a.dest for a in run_group._group_actions} == {
        option_dest(("run", name)) for name in ("epochs", "learning_rate", "threads", "device")
    }


def test_help_shows_the_defaults_of_the_instance_given():
    assert "epochs at most (default 30)" in help_text(parser_for())
    assert "epochs at most (default 8)" in help_text(parser_for(Config(run=Run(epochs=8))))
    text = help_text(parser_for())
    assert "train,val,test shares (default 0.7,0.15,0.15)" in text
    assert "batch normalisation (default on)" in text
    assert "CPU threads (default none)" in text


def test_only_what_was_typed_is_applied_over_the_base():
    base = Config(name="vae", run=Run(epochs=8, threads=2))
    args = parser_for().parse_args(["--epochs", "3"])
    config = config_from_args(base, args)
    assert config.run.epochs == 3
    assert (config.name, config.run.threads, config.run.learning_rate) == ("vae", 2, 1e-3)
    assert config_from_args(base, parser_for().parse_args([])) == base
    assert base.run.epochs == 8  # the base is not changed


def test_comma_lists_with_element_types_and_repeatable_pairs():
    args = parser_for().parse_args(
        ["--fractions", "0.5,0.25,0.25", "--terms", "recon,cluster", "--pairs", "0,1"]
        + ["--pairs", "2,3"]
    )
    config = config_from_args(Config(), args)
    assert config.split.fractions == (0.5, 0.25, 0.25)
    assert isinstance(config.split.fractions, tuple)
    assert config.terms == ("recon", "cluster")
    assert config.pairs == [[0, 1], [2, 3]]
    with pytest.raises(SystemExit):
        parser_for().parse_args(["--fractions", "0.5 0.25"])


def test_booleans_none_and_choices(capsys):
    parser = parser_for()
    assert config_from_args(Config(), parser.parse_args(["--no-batch-norm"])).batch_norm is False
    assert config_from_args(
        Config(batch_norm=False), parser.parse_args(["--batch-norm"])
    ).batch_norm
    given = config_from_args(Config(run=Run(threads=2)), parser.parse_args(["--threads", "none"]))
    assert given.run.threads is None
    assert config_from_args(Config(), parser.parse_args(["--threads", "4"])).run.threads == 4
    assert config_from_args(Config(), parser.parse_args(["--device", "cpu"])).run.device == "cpu"
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "tpu"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--epochs", "many"])


def test_prefix_skip_aliases_and_two_configs_on_one_parser():
    parser = argparse.ArgumentParser(prog="test")
    add_options(parser, Config(), group_title="encoder")
    add_options(
        parser,
        Config(run=Run(epochs=5)),
        prefix="labeler-",
        group_title="labeler",
        skip=("split",),
        aliases={"name": ("--labeler-arch",)},
    )
    text = help_text(parser)
    assert "--labeler-epochs" in text and "--labeler-lr" in text
    assert "--labeler-fractions" not in text  # skipped
    args = parser.parse_args(["--epochs", "2", "--labeler-epochs", "4", "--labeler-arch", "b3"])
    encoder = config_from_args(Config(), args)
    labeler = config_from_args(Config(run=Run(epochs=5)), args, prefix="labeler-")
    assert (encoder.run.epochs, encoder.name) == (2, "ae")
    assert (labeler.run.epochs, labeler.name) == (4, "b3")
    assert config_from_args(Config(), parser.parse_args([]), prefix="labeler-") == Config()


def test_only_given_false_makes_the_instance_the_parser_default():
    parser = parser_for(Config(run=Run(epochs=9)), only_given=False)
    args = parser.parse_args([])
    assert getattr(args, option_dest(("run", "epochs"))) == 9
    assert config_from_args(Config(), args).run.epochs == 9
