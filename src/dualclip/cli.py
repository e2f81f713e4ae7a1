"""The `dualclip` command. Each subcommand lives in `dualclip.commands.<name>` and exposes
`HELP` (one line), `add_arguments(parser)` and `run(args) -> int`; modules are imported only when used."""

import argparse
import importlib
import sys

# subcommand name -> module under dualclip.commands
COMMANDS = {
    "convert": "convert",
    "embed": "embed",
    "classify": "classify",
    "demo": "demo",
    "score": "score",
    "index": "index",
    "search": "search",
    "eval": "eval",
}


def _load(name: str):
    return importlib.import_module(f"dualclip.commands.{COMMANDS[name]}")


def build_parser(argv) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualclip", description="CLIP-family models for transformers.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((arg for arg in argv if not arg.startswith("-")), None)
    for name in COMMANDS:
        try:
            module = _load(name) if name == wanted or wanted is None or wanted not in COMMANDS else None
        except ModuleNotFoundError:
            continue
        help_text = module.HELP if module else None
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if module:
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    """Runs one subcommand. Bad input (a missing or unreadable file, a damaged model folder, a wrong option value)
    is reported as one line, `dualclip COMMAND: error: ...`, with exit code 2, never a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        if isinstance(getattr(args, "model", None), str):  # every command that takes --model FOLDER
            from .commands._common import check_model_folder

            check_model_folder(args.model)
        return args.run(args) or 0
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split())  # one line, also for multi-line messages from libraries
        print(f"dualclip {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
