"""The `hf-instruct` command. Each stage's subcommand runs `run_<stage>`; `recipes/<stage>.py` is that subcommand.

hf-instruct pretrain --config recipes/tiny/pretrain/config.yaml [--field value ...]
hf-instruct sft --config recipes/tiny/sft/config.yaml --model_name_or_path <pretrained dir> [...]
hf-instruct collect_comparisons --model_name_or_path <sft dir> --train_files <prompts with checks> --output_dir d
hf-instruct <stage> --help     # every field of the stage's config
hf-instruct pipeline [--config recipes/default/pipeline.yaml] [--output_dir d] [--seed n]
                     [--push_to_hub] [--hub_model_id namespace/name]
hf-instruct evaluate <model> [--suite | --data file ...] [--reward_model rm] [--baseline model] [--prompt_format plain]
hf-instruct generate <model> --prompt "..." [--num_return_sequences 5]
hf-instruct serve <model> [--port 8000] [--request_timeout 120]   # an OpenAI-compatible chat server
hf-instruct summarize <run dir> <run dir> ...      # several pipeline runs (seeds): mean ± sd of each figure
hf-instruct data export <dir> [--model <dir>] [--seed n] [--size tiny|default]
hf-instruct push <model dir> <namespace/name> [--private] [--revision r] [--commit_message m]
                 [--card keep|regenerate] [--license id] [--base_model_repo_id id]
hf-instruct <command> --help   # every flag of a command

Flags are --snake_case, as in TRL and transformers.
"""

import argparse
import errno
import os
import sys
from pathlib import Path

import yaml

from ._version import __version__
from .hub import PushError

DEFAULT_PIPELINE = "recipes/default/pipeline.yaml"
DEBUG_VARIABLE = "HF_INSTRUCT_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    from .stages import STAGES

    parser = argparse.ArgumentParser(
        prog="hf-instruct",
        description="Build an InstructGPT-style model with stock Hugging Face trainers.",
        epilog="Run `hf-instruct <command> --help` for the fields of a stage's config.",
    )
    parser.add_argument("--version", action="version", version=f"hf-instruct {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    for name, stage in STAGES.items():
        commands.add_parser(name, help=(stage.config_class.__doc__ or "").strip().splitlines()[0], add_help=False)

    pipeline = commands.add_parser("pipeline", help="InstructGPT end to end: every stage, baselines, a report.")
    pipeline.add_argument("--config", default=DEFAULT_PIPELINE, help=f"Pipeline YAML (default: {DEFAULT_PIPELINE}).")
    pipeline.add_argument("--output_dir", help="Default: the config's output_dir.")
    pipeline.add_argument("--seed", type=int, help="Default: the config's seed (it also seeds the suite).")
    pipeline.add_argument(
        "--push_to_hub", action="store_true", default=None, help="Push the final (PPO-ptx) model to the Hub when done."
    )
    pipeline.add_argument(
        "--hub_model_id", help="'namespace/name' or 'name' (the token's user); default: the output_dir's folder name."
    )

    evaluate = commands.add_parser("evaluate", help="Answer held-out instructions with a model and score them.")
    evaluate.add_argument("model", help="A saved chat model (an hf-instruct sft/ppo/dpo/grpo output) or adapter.")
    evaluate.add_argument("--suite", action="store_true", help="The embedded suite's held-out splits (default).")
    evaluate.add_argument("--data", nargs="+", help="Instruction files with reference answers instead.")
    evaluate.add_argument(
        "--on_bad_record",
        choices=("error", "skip"),
        default="error",
        help="With --data: stop, or skip and count (default: %(default)s).",
    )
    evaluate.add_argument("--reward_model", help="Also report mean reward and win rate against the references.")
    evaluate.add_argument("--baseline", help="With --reward_model: also the win rate against this model's answers.")
    evaluate.add_argument(
        "--output_dir", help="Where eval_results.json/.md go (default: <model>-eval beside the model folder)."
    )
    evaluate.add_argument("--limit", type=int, help="At most this many examples per split.")
    evaluate.add_argument(
        "--max_new_tokens", type=int, default=64, help="Longest answer, in tokens (default: %(default)s)."
    )
    evaluate.add_argument(
        "--batch_size", type=int, default=16, help="Prompts answered at once (default: %(default)s)."
    )
    evaluate.add_argument(
        "--suite_size",
        choices=("tiny", "default"),
        help="With --suite: the tiny suite, or the default pipeline's sizes (default: the suite the model's run "
        "record names, else the default pipeline's).",
    )
    evaluate.add_argument(
        "--seed", type=int, help="Seed of the suite (default: the one the model's run record names, else 42)."
    )
    evaluate.add_argument(
        "--prompt_format",
        choices=("chat", "plain"),
        default="chat",
        help="chat: the chat template (a tuned model); plain: 'Question: ... Answer:' text, the format a base model's "
        "corpus holds (default: %(default)s).",
    )

    generate = commands.add_parser("generate", help="Answer a prompt with a chat model.")
    generate.add_argument("model", help="A saved chat model or adapter.")
    generate.add_argument("--prompt", required=True, help="The user's message.")
    generate.add_argument("--system", help="An optional system message.")
    generate.add_argument(
        "--num_return_sequences", type=int, default=1, help="Answers to sample (> 1 samples; default: %(default)s)."
    )
    generate.add_argument(
        "--max_new_tokens", type=int, default=128, help="Longest answer, in tokens (default: %(default)s)."
    )
    generate.add_argument("--do_sample", action="store_true", help="Sample (default: greedy for one answer).")
    generate.add_argument(
        "--temperature", type=float, default=0.7, help="Sampling temperature (default: %(default)s)."
    )
    generate.add_argument("--seed", type=int, default=0, help="Seed of the sampling (default: %(default)s).")

    commands.add_parser("serve", help="An OpenAI-compatible chat server: `hf-instruct serve --help`.", add_help=False)

    summarize = commands.add_parser(
        "summarize", help="Several pipeline runs (seeds) as one table: mean ± sd of each figure over the runs."
    )
    summarize.add_argument("run_dirs", nargs="+", help="Pipeline output folders, each with its comparison.json.")
    summarize.add_argument("--output", help="Also write the table to this markdown file.")

    data = commands.add_parser("data", help="The embedded instruction suite.")
    data_commands = data.add_subparsers(dest="data_command", metavar="<data command>", required=True)
    export = data_commands.add_parser("export", help="Write every split of the suite as JSONL files.")
    export.add_argument("directory", help="Where the <split>.jsonl files go.")
    export.add_argument("--model", help="Export the suite this model's run record names.")
    export.add_argument("--seed", type=int, help="Seed of the suite (default: the model's, else 42).")
    export.add_argument(
        "--size",
        choices=("tiny", "default"),
        help="The tiny suite, or the default pipeline's sizes (default: the model's, else the default pipeline's).",
    )

    push = commands.add_parser("push", help="Upload a saved model (weights, code, tokenizer, card) to the Hub.")
    push.add_argument("folder", help="A model folder written by a stage (or any saved model / LoRA adapter).")
    push.add_argument("repo_id", help="'namespace/name' (or 'name': the token's user).")
    push.add_argument("--private", action="store_true", default=None, help="Create the repo private.")
    push.add_argument("--revision", help="Branch to commit to (created if missing; default: main).")
    push.add_argument("--commit_message", help="Default: 'Upload <folder> with hf-instruct'.")
    push.add_argument("--base_model_repo_id", help="For a LoRA adapter: the Hub repo of its base model.")
    push.add_argument(
        "--card",
        choices=("keep", "regenerate"),
        help="The folder's README.md as it is, or our card (default: keep a README.md you wrote, else ours).",
    )
    push.add_argument("--license", help="The card's Hub license id (default: apache-2.0 for our runs, else unknown).")
    return parser


RESUMES = "run the same command again: finished work is kept and the run resumes from its last complete checkpoint"


def main(argv: list[str] | None = None) -> int:
    """Run a command; our clear errors (bad input, missing files, failed pushes) and what the machine did to it (a
    full disk, an unreachable Hub, Ctrl-C) end it with one line and exit code 1 (130 for Ctrl-C), without a traceback
    unless HF_INSTRUCT_DEBUG=1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and not argv[0].startswith("-") else "error"
    try:
        return run_command(argv)
    except KeyboardInterrupt as interrupt:
        fail(command, f"interrupted (Ctrl-C); {RESUMES}.", interrupt, code=130)
    except Exception as error:
        if (message := environment_failure(error)) is None and not isinstance(error, CLEAR_ERRORS):
            raise
        fail(command, message or " ".join(str(error).split()), error)  # one line, whatever the library wrapped


CLEAR_ERRORS = (ValueError, OSError, PushError, yaml.YAMLError)  # errors whose message is the whole story
HTTP_MODULES = ("huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3")  # the Hub's


def fail(command: str, message: str, error: BaseException, code: int = 1) -> None:
    """Print `message` as the command's one-line error and exit with `code` (re-raise under HF_INSTRUCT_DEBUG=1)."""
    if os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0"):
        raise error
    print(f"hf-instruct {command}: {message}\n(set {DEBUG_VARIABLE}=1 for the traceback)", file=sys.stderr)
    raise SystemExit(code) from None


def environment_failure(error: BaseException) -> str | None:
    """What the machine did, when `error` or an error it comes from is a full disk or an unreachable Hub (None:
    neither). Libraries wrap these deep (torch, safetensors, httpx, huggingface_hub), so the chain is searched."""
    from huggingface_hub import constants

    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for link in chain:
        text = str(link)
        if getattr(link, "errno", None) == errno.ENOSPC or "No space left on device" in text or "os error 28" in text:
            return f"the disk is full (no space left on device); free some space, then {RESUMES}."
        if "PytorchStreamWriter failed writing" in text or "inline_container.cc" in text:
            written = " ".join(text.split())
            return f"writing a file failed ({written}): the disk may be full; free some space, then {RESUMES}."
    from_hub = any(type(link).__module__.split(".")[0] in HTTP_MODULES for link in chain)
    if from_hub and any(
        isinstance(link, ConnectionError | TimeoutError) or "Connect" in type(link).__name__ for link in chain
    ):
        cause = " ".join(str(chain[-1]).split())
        return f"cannot reach the Hub at {constants.ENDPOINT} ({cause}); once it is reachable, {RESUMES}."
    return None


def run_command(argv: list[str]) -> int:
    from .stages import STAGES, parse_config

    if argv and argv[0] in STAGES:
        stage = STAGES[argv[0]]
        output_dir = stage.run(parse_config(stage.config_class, argv[1:], prog=f"hf-instruct {argv[0]}"))
        made = "comparisons" if argv[0] == "collect_comparisons" else "model"
        print(f"{argv[0]}: done, {made} in {output_dir}")
        return 0
    if argv and argv[0] == "serve":  # its own parser, in serving.py
        from .serving import serve

        serve(argv[1:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {
        "pipeline": pipeline_command,
        "evaluate": evaluate_command,
        "generate": generate_command,
        "data": data_command,
        "push": push_command,
        "summarize": summarize_command,
    }
    if args.command not in commands:
        parser.print_help()
        return 0
    return commands[args.command](args)


def pipeline_command(args) -> int:
    from .pipeline import PipelineConfig, run_pipeline

    if not Path(args.config).is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file (run from the repository root, or pass one).")
    config = PipelineConfig.from_yaml(
        args.config,
        output_dir=args.output_dir,
        seed=args.seed,
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
    )
    report = run_pipeline(config)
    print(report.read_text())
    print(f"pipeline: done, report in {report}")
    return 0


def evaluate_command(args) -> int:
    from .checkpoints import check_reward_model
    from .data.suite import build_suite
    from .evaluation import evaluate_model, load_scored_examples, suite_examples, write_results
    from .evaluation.evaluator import results_markdown

    if args.reward_model:  # before a model answers anything
        check_reward_model(args.reward_model, "--reward_model")
    demonstrations = None  # the suite's training demonstrations give the trivial-rule floors their constants
    if args.data:
        splits = {Path(path).stem: load_scored_examples(path, args.on_bad_record) for path in args.data}
    else:
        # the held-out splits and the demonstrations alone: 2 s for the default suite, where the whole takes ~20
        config = suite_config(args.suite_size, args.seed, args.model, "evaluate")
        splits, demonstrations = suite_examples(config), build_suite(config, ["sft"])["sft"]
    results = evaluate_model(
        args.model,
        splits,
        reward_model=args.reward_model,
        baseline_path=args.baseline,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        limit=args.limit,
        demonstrations=demonstrations,
        prompt_format=args.prompt_format,
    )
    json_path, _ = write_results(results, args.output_dir or default_eval_dir(args.model))
    print(results_markdown(results))
    print(f"evaluate: done, results in {json_path}")
    return 0


def default_eval_dir(model: str) -> Path:
    """Where `evaluate` writes without --output_dir: beside the model (`<model>-eval`), never inside it, where the
    results would go stale when the model is trained on and be pushed with it; `eval/<name>` for a Hub id."""
    from .utils import is_hub_id

    return Path("eval", model.replace("/", "--")) if is_hub_id(model) else Path(f"{os.path.normpath(model)}-eval")


def generate_command(args) -> int:
    from transformers import set_seed

    from .evaluation import generate_answers, load_chat_model

    if not args.prompt.strip():
        raise ValueError("--prompt is empty: give the message to answer.")
    for name in ("num_return_sequences", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    set_seed(args.seed)
    model, tokenizer = load_chat_model(args.model)
    conversation = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    (answers,) = generate_answers(
        model,
        tokenizer,
        [conversation],
        max_new_tokens=args.max_new_tokens,
        num_return_sequences=args.num_return_sequences,
        do_sample=args.do_sample or args.num_return_sequences > 1,
        temperature=args.temperature,
        show_progress=False,
    )
    for number, answer in enumerate(answers, start=1):
        print(f"[{number}] {answer}" if len(answers) > 1 else answer)
    return 0


def data_command(args) -> int:
    from .data.suite import build_suite, export_suite

    config = suite_config(args.size, args.seed, args.model, "data export")
    for split, path in export_suite(build_suite(config), args.directory, config).items():
        print(f"{split}: {path}")
    return 0


def suite_config(size: str | None, seed: int | None, model: str | None, command: str):
    """The suite a command uses, said on stdout: the one `model`'s run record names (else the default pipeline's,
    `SuiteConfig()`), resized by `--size tiny|default` and reseeded by `--seed` when given."""
    import dataclasses

    from .data.suite import SuiteConfig, recorded_suite

    recorded = recorded_suite(model) if model else None
    config, source = recorded or (SuiteConfig(), "the default pipeline's")
    if size is not None:
        config = SuiteConfig.tiny(config.seed) if size == "tiny" else SuiteConfig(seed=config.seed)
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    changes = [f"{name} {value}" for name, value in (("size", size), ("seed", seed)) if value is not None]
    named = f"{source}, named by the run record of {model}" if recorded else source
    print(f"hf-instruct {command}: {config.describe()} ({named}{', with ' + ', '.join(changes) if changes else ''})")
    return config


def summarize_command(args) -> int:
    from .summary import read_comparisons, summarize_runs, summary_markdown

    text = "\n".join(summary_markdown(summarize_runs(read_comparisons(args.run_dirs)))) + "\n"
    print(text, end="")
    if args.output:
        Path(args.output).write_text(text)
    return 0


def push_command(args) -> int:
    from .hub import push_to_hub

    url = push_to_hub(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        base_model_repo_id=args.base_model_repo_id,
        card=args.card,
        license=args.license,
    )
    print(f"push: done, {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
