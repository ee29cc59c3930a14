"""The ``mtcore`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from mtcore.errors import BackendUnavailable, MTCoreError


def cmd_info(args: argparse.Namespace) -> int:
    from mtcore.devices import info

    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"python {data['python']} on {data['platform']} ({data['cpu_count']} CPUs)")
    for name, fw in data["frameworks"].items():
        if not fw["available"]:
            print(f"{name}: not available: {fw['reason']}")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in fw["versions"].items())
        print(f"{name}: {versions}")
        for d in fw["devices"]:
            print(f"  {d}")
    print(f"transformers: {data['transformers'] or 'not installed'}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from mtcore.config import ModelConfig

    cfg = ModelConfig.from_hf(args.model) if "/" in args.model else ModelConfig.preset(args.model)
    print(f"{args.model}: {cfg.num_params():,} trainable parameters")
    print(json.dumps(cfg.__dict__, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="framework versions and the devices each framework sees")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("params", help="a model preset's (or HF checkpoint's) config and parameter count")
    p.add_argument("model", help="preset name (tiny, small, base, marian-en-hu) or HF checkpoint directory")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MTCoreError, BackendUnavailable) as e:
        print(f"mtcore: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
