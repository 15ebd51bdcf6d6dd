"""tools/cli_config.py: the command line is generated from the configs — every field one flag,
the dataclass defaults when no flag is given, and --save-config / --config replay exactly."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from smoothrot.compiler import config as cfg
from smoothrot.tools.cli import build_parser

COMMANDS = {
    "export": (cfg.ExportConfig, ["-o", "x"]),
    "compile": (cfg.CompileConfig, ["-o", "x", "--recipe", "w4a16"]),
    "lower": (cfg.LowerConfig, ["m", "-o", "x"]),
    "build": (cfg.BuildConfig, ["m", "-o", "x"]),
    "eval": (cfg.EvalConfig, ["m"]),
    "generate": (cfg.GenerateConfig, ["m", "--prompt", "p"]),
    "bench": (cfg.BenchConfig, ["m"]),
    "calibrate": (cfg.CalibrationConfig, ["m"]),
    "analyze": (cfg.AnalyzeConfig, ["-o", "x"]),
    "doctor": (cfg.DoctorConfig, []),
}


def _leaf_paths(cls, path=()):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if dataclasses.is_dataclass(inner[0]):
            yield from _leaf_paths(inner[0], (*path, f.name))
        else:
            yield (*path, f.name)


def _parse(argv):
    args = build_parser().parse_args(argv)
    return args, args.flags.config(args)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_field_has_one_flag_and_no_flag_means_the_default(command):
    cls, argv = COMMANDS[command]
    args, config = _parse([command, *argv])
    flagged = {f.path for f in args.flags.flags if not f.enable}
    expected = set(_leaf_paths(cls))
    if cls is cfg.CompileConfig:
        expected.discard(("lowering", "evaluate"))  # follows the compile's own --eval
    assert flagged == expected
    options = [f.option for f in args.flags.flags]
    assert len(options) == len(set(options))
    default = cls(recipe=cfg.Recipe.W4A16) if cls is cfg.CompileConfig else cls()
    assert config == default


def test_flags_set_nested_fields_and_enable_optional_configs():
    argv = ["compile", "-o", "x", "--recipe", "w4a8", "--group-size", "64", "--no-eval"]
    argv += ["--tune-epochs", "3", "--target", "ort", "--per-ic", "split"]
    argv += ["--dump-after", "fold_norm_gamma", "--dump-after", "quantize_weights"]
    argv += ["--clip-grid", "1.0,0.9"]
    _, config = _parse(argv)
    assert config.recipe is cfg.Recipe.W4A8 and config.weights.group_size == 64
    assert config.tune == cfg.TuneConfig(epochs=3) and not config.evaluate
    assert config.target is cfg.Target.ORT and config.lowering.per_ic is cfg.PerIcKernel.SPLIT
    assert config.dump_after == ("fold_norm_gamma", "quantize_weights")
    assert config.weights.clip_grid == (1.0, 0.9)
    _, tuned = _parse(["compile", "-o", "x", "--recipe", "w4a16", "--tune"])
    assert tuned.tune == cfg.TuneConfig()
    _, built = _parse(["build", "m", "-o", "x", "--compute-capability", "sm_80,86", "--plugins"])
    assert built.engine.compute_capabilities == (80, 86) and built.plugins


def test_save_config_then_config_replays_and_flags_override(tmp_path):
    saved = tmp_path / "c.json"
    argv = ["compile", "-o", "x", "--recipe", "w4a4", "--alpha", "0.7", "--tune"]
    _, first = _parse([*argv, "--save-config", str(saved)])
    _, replayed = _parse(["compile", "-o", "y", "--config", str(saved)])
    assert replayed == first
    _, changed = _parse(["compile", "-o", "y", "--config", str(saved), "--alpha", "0.3"])
    assert changed == dataclasses.replace(first, alpha=0.3)


def test_a_required_field_missing_everywhere_is_one_clear_error():
    with pytest.raises(ValueError, match="--recipe is required"):
        _parse(["compile", "-o", "x"])


def test_bad_values_exit_2(capsys):
    for argv in (["compile", "-o", "x", "--recipe", "w3a3"], ["build", "m", "-o", "x",
                 "--compute-capability", "eighty"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            _parse(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith(f"(see smoothrot {argv[0]} --help)"), err
