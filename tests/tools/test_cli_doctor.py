"""`smoothrot doctor`: the installation report, and `--trt` refusing cleanly (one line, status 2)
where TensorRT >= 10.9 or a GPU is missing — TensorRT-RTX's bindings do not count."""

import importlib.util
import json

import pytest

from smoothrot.compiler.targets.trt.doctor import Environment, environment
from smoothrot.tools.cli import main

HERE = environment()


def test_doctor_reports_what_is_installed(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == [
        "tensorrt",
        "tensorrt_rtx_bindings",
        "triton",
        "torch",
        "gpu",
    ]
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checks"] == [] and report["environment"]["torch"] == HERE.torch


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_rtx_bindings") is None, reason="needs TensorRT-RTX"
)
def test_tensorrt_rtx_is_not_a_plugin_capable_tensorrt():
    assert HERE.tensorrt_rtx is not None
    if HERE.tensorrt is None:
        assert not HERE.tensorrt_plugins
        assert "tensorrt_rtx_bindings" in HERE.missing_for_plugins()[0]


def test_doctor_trt_without_tensorrt_or_gpu_fails_in_one_line(capsys):
    if not HERE.missing_for_plugins():
        pytest.skip("TensorRT >= 10.9 and a GPU are here: test_doctor.py runs --trt")
    assert main(["doctor", "--trt"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smoothrot: error: doctor --trt needs"), err
    assert all(m in err[0] for m in HERE.missing_for_plugins())
    assert captured.out.splitlines()[0].startswith("tensorrt")  # the report came first


def _env(**changes) -> Environment:
    base = dict(tensorrt="10.9.0.34", tensorrt_plugins=True, tensorrt_rtx=None, triton="3.9.0")
    base |= dict(torch="2.13.0", cuda=True, gpu="NVIDIA H100 (sm_90)")
    return Environment(**(base | changes))


def test_missing_names_each_absent_piece():
    assert _env().missing_for_plugins() == []
    rtx_only = _env(tensorrt=None, tensorrt_plugins=False, tensorrt_rtx="1.7.1.116", cuda=False)
    assert rtx_only.missing_for_plugins() == [
        "TensorRT >= 10.9 with tensorrt.plugin (not installed; tensorrt_rtx_bindings 1.7.1.116 "
        "has no plugin API)",
        "a CUDA GPU (torch sees none)",
    ]
    old = _env(tensorrt="10.8.0.43", tensorrt_plugins=False)
    assert old.missing_for_plugins() == ["TensorRT >= 10.9 with tensorrt.plugin (found 10.8.0.43)"]
    assert _env(triton=None).missing_for_plugins() == ["triton (compiles the plugins' PTX)"]
