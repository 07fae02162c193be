"""The `hf-instruct` command. Each stage's subcommand calls the same `run_<stage>` function as its recipe."""

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-instruct",
        description="Build an InstructGPT-style model with stock Hugging Face trainers.",
    )
    parser.add_argument("--version", action="version", version=f"hf-instruct {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
