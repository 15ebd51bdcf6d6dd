"""tools/check_engine.py refuses cleanly where it cannot run (no GPU here)."""

import pytest
import torch

from smoothrot.tools.check_engine import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_check_engine_needs_a_gpu(capsys, tmp_path, tiny_export):
    built = tmp_path / "trt"
    built.mkdir()
    for f in ("model.onnx", "model.onnx.data", "smoothrot.json"):
        (built / f).symlink_to(tiny_export("llama") / f)
    (built / "engine.trt").write_bytes(b"")
    (built / "build.json").write_text('{"backend": "tensorrt-rtx"}')
    assert main([str(built)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs an NVIDIA GPU" in err[0]
    assert main([str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
