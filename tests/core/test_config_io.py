"""core/config_io.py: every command config round-trips through JSON exactly, and a file that
does not fit (unknown field, wrong type, other version, other command) is refused by name."""

from __future__ import annotations

import dataclasses
import json

import pytest

from smoothrot.compiler import config as cfg
from smoothrot.core.config_io import config_from_dict, config_to_dict, load_config, save_config
from smoothrot.core.errors import SmoothrotError
from smoothrot.passes.quantize_weights import Algorithm, GroupingMode, WeightQuantConfig

COMMAND_CONFIGS = [
    cfg.ExportConfig(cfg.DType.FP16, 22),
    cfg.EvalConfig(seq=64, windows=2, system_prompt=True, kv_prefix=3, backend=cfg.Backend.TRT),
    cfg.GenerateConfig(max_new_tokens=5),
    cfg.CalibrationConfig(tokens=1024, seq=256, hessian=False),
    cfg.LowerConfig(accuracy_level=0, per_ic=cfg.PerIcKernel.SPLIT),
    cfg.BuildConfig(
        cfg.TrtBackend.TENSORRT_RTX, cfg.EngineConfig(256, 1024, compute_capabilities=(80, 86))
    ),
    cfg.CompileConfig(
        recipe=cfg.Recipe.W4A8,
        transform=cfg.Transform.HYBRID,
        weights=WeightQuantConfig(GroupingMode.PER_IC, 64, Algorithm.RTN, clip_grid=(1.0, 0.9)),
        dump_after=("smooth", "quantize_weights"),
        tune=cfg.TuneConfig(epochs=3, lr=1e-2),
        target=cfg.Target.ORT,
        lowering=cfg.LowerConfig(rotation=cfg.RotationKernel.MATMUL),
    ),
    cfg.BenchConfig(runs=2, profile=True),
    cfg.AnalyzeConfig(tokens=512),
    cfg.DoctorConfig(trt=True),
]


@pytest.mark.parametrize("config", COMMAND_CONFIGS, ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_json(config):
    data = json.loads(json.dumps(config_to_dict(config)))
    assert data["version"] == type(config).VERSION
    assert config_from_dict(type(config), data) == config
    if type(config) is not cfg.CompileConfig:  # the one config with a required field
        assert config_from_dict(type(config), {}) == type(config)()


def test_defaults_and_nested_defaults_come_back():
    data = config_to_dict(cfg.CompileConfig(recipe=cfg.Recipe.W4A16))
    assert data["weights"]["grouping"] == "adadim" and data["tune"] is None
    back = config_from_dict(cfg.CompileConfig, {"recipe": "w4a16"})
    assert back == cfg.CompileConfig(recipe=cfg.Recipe.W4A16)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"recipe": "w4a16", "groupsize": 64}, "unknown field 'groupsize'"),
        ({"recipe": "w4a16", "version": 99}, "config version 99 is not 2"),
        ({"recipe": "w5a16"}, "CompileConfig.recipe: 'w5a16' is not one of"),
        ({"recipe": "w4a16", "alpha": "0.5"}, "CompileConfig.alpha: expected float"),
        ({"recipe": "w4a16", "weights": {"group_size": 64.0}}, "weights.group_size"),
        ({"recipe": "w4a16", "evaluate": 1}, "expected bool"),
        ({"recipe": "w4a16", "dump_after": "smooth"}, "expected a list"),
    ],
)
def test_a_config_that_does_not_fit_is_refused_by_field(data, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(cfg.CompileConfig, data)


def test_the_validation_of_the_class_still_runs():
    with pytest.raises(ValueError, match="calibration tokens must be >= 512"):
        config_from_dict(cfg.CompileConfig, {"recipe": "w4a16", "calibration_tokens": 5})


def test_saved_file_is_for_one_command(tmp_path):
    path = tmp_path / "lower.json"
    config = cfg.LowerConfig(accuracy_level=0)
    save_config(path, "lower", config)
    assert load_config(path, "lower", cfg.LowerConfig) == config
    with pytest.raises(SmoothrotError, match="holds a config of `smoothrot lower`, not of `build`"):
        load_config(path, "build", cfg.BuildConfig)
    path.write_text("{not json")
    with pytest.raises(SmoothrotError, match="is not a smoothrot config"):
        load_config(path, "lower", cfg.LowerConfig)
    with pytest.raises(SmoothrotError, match="does not exist"):
        load_config(tmp_path / "none.json", "lower", cfg.LowerConfig)
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_config_class_has_a_version_and_is_frozen():
    for name in cfg.__all__:
        cls = getattr(cfg, name)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            assert isinstance(cls.VERSION, int), name
            assert cls.__dataclass_params__.frozen, name
