"""The `hf-instruct` command. Each stage's subcommand calls the same `run_<stage>` function as its recipe.

hf-instruct pretrain --config recipes/tiny/pretrain/config.yaml [--field value ...]
hf-instruct sft --config recipes/tiny/sft/config.yaml --model_name_or_path <pretrained dir> [...]
hf-instruct <stage> --help     # every field of the stage's config
hf-instruct push <model dir> <namespace/name> [--private] [--revision r] [--commit-message m]
"""

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    from .stages import STAGES

    parser = argparse.ArgumentParser(
        prog="hf-instruct",
        description="Build an InstructGPT-style model with stock Hugging Face trainers.",
        epilog="Run `hf-instruct <command> --help` for the fields of a stage's config.",
    )
    parser.add_argument("--version", action="version", version=f"hf-instruct {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (config_class, _) in STAGES.items():
        commands.add_parser(name, help=(config_class.__doc__ or "").strip().splitlines()[0], add_help=False)
    push = commands.add_parser("push", help="Upload a saved model (weights, code, tokenizer, card) to the Hub.")
    push.add_argument("folder", help="A model folder written by a stage (or any saved model / LoRA adapter).")
    push.add_argument("repo_id", help="'namespace/name' (or 'name': the token's user).")
    push.add_argument("--private", action="store_true", default=None, help="Create the repo private.")
    push.add_argument("--revision", help="Branch to commit to (created if missing; default: main).")
    push.add_argument("--commit-message", help="Default: 'Upload <folder> with hf-instruct'.")
    push.add_argument("--base_model_repo_id", help="For a LoRA adapter: the Hub repo of its base model.")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .stages import STAGES, parse_config

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in STAGES:
        config_class, run = STAGES[argv[0]]
        output_dir = run(parse_config(config_class, argv[1:]))
        print(f"{argv[0]}: done, model in {output_dir}")
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "push":
        from .hub import PushError, push_to_hub

        try:
            url = push_to_hub(
                args.folder,
                args.repo_id,
                private=args.private,
                revision=args.revision,
                commit_message=args.commit_message,
                base_model_repo_id=args.base_model_repo_id,
            )
        except PushError as error:
            parser.exit(1, f"hf-instruct push: {error}\n")
        print(f"push: done, {url}")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
