"""``smoothrot doctor [--trt]``: flags → :mod:`smoothrot.compiler.targets.trt.doctor`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from smoothrot.compiler.config import DoctorConfig
from smoothrot.tools.cli_config import add_config_flags

__all__ = ["add_doctor"]


def add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="report TensorRT / Triton / GPU availability; --trt checks our TensorRT plugins",
        description="Without flags: what is installed. With --trt (TensorRT >= 10.9 and a GPU): "
        "build a one-layer engine with each AOT plugin (fp16 and fp32) and compare its output "
        "with the numpy reference; exit status 1 if any check fails, 2 if --trt cannot run.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_run_doctor, flags=add_config_flags(p, "doctor", DoctorConfig))


def _run_doctor(args: argparse.Namespace) -> int:
    from smoothrot.compiler.targets.trt.doctor import check_plugins, environment

    config: DoctorConfig = args.flags.config(args)
    env = environment()
    if not args.json:
        print("\n".join(env.lines()))
    checks = check_plugins() if config.trt else []
    if args.json:
        print(json.dumps({"environment": asdict(env), "checks": [c.as_dict() for c in checks]}))
    else:
        for check in checks:
            print(check.line())
    return 0 if all(c.passed for c in checks) else 1
