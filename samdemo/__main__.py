"""``python -m samdemo <command>``: one entry point for the CLI commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from samdemo import distributed

# command -> module exposing configure_parser(parser) and run(args) -> exit code
COMMANDS = {
    "train-base": "samdemo.train_base",
    "attack": "samdemo.attacks.cli",
    "push-adapter": "samdemo.hub",
    "train-adapter": "samdemo.train_adapter",
    "evaluate": "samdemo.evaluate",
    "control": "samdemo.controls",
    "curve": "samdemo.robustness_curve",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samdemo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.configure_parser(sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "device"):  # every command that runs a model: an unusable device is one clear line
            args.device = distributed.check_device(args.device)
        return modules[args.command].run(args)
    except (ValueError, RuntimeError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
