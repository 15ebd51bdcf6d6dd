"""Every kernel compiles to PTX for sm_80, sm_87, sm_89 and sm_90 on a machine without a GPU."""

import json
import os
import subprocess
import sys

import pytest

from smoothrot.plugins.ptx import ARCHS, compile_ptx, plugin_sources
from tests.plugins.conftest import INTERPRET

# One instance of each kernel (the per-OC / per-IC variants differ only in constexprs), small
# Hadamard factors: compiling all of them for four architectures takes ~40 s on two cores.
LABELS = [
    "w4a16_decode_per_ic_g128_fp16",
    "w4a16_prefill_per_oc_g128_fp16",
    "w4a8_decode_per_oc_g128_fp16",
    "w4a8_prefill_per_ic_g128_fp16",
    "hadamard_16x16_fp16",
]


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    """PTX records from child processes: this one may hold interpreter-built kernels. Two
    children (two architectures each) use both CI cores."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "smoothrot.plugins.ptx", "--json", "--hadamard", "16", "16"]
    children = [
        subprocess.Popen(
            [*command, "--arch", *map(str, archs), "--only", *LABELS],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for archs in (ARCHS[:2], ARCHS[2:])
    ]
    records = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
        records += json.loads(out.strip().splitlines()[-1])
    return records


def test_each_kernel_compiles_for_each_arch(compiled):
    got = {(r["label"], r["arch"]) for r in compiled}
    assert got == {(label, arch) for label in LABELS for arch in ARCHS}
    for r in compiled:
        # sm_90 kernels come out as sm_90a (Hopper-specific instructions allowed)
        assert r["target"].startswith(f"sm_{r['arch']}"), r
        assert r["name"] == r["label"].split("_per")[0].split("_16x")[0] + "_kernel"
        assert r["ptx_bytes"] > 1000


def test_ptx_text_and_entry_point():
    if INTERPRET:
        with pytest.raises(RuntimeError, match="interpreter"):
            compile_ptx(plugin_sources()[0], 80)
        return
    kernel = compile_ptx(plugin_sources()[0], 80)
    assert ".target sm_80" in kernel.ptx
    assert f".entry {kernel.name}(" in kernel.ptx
