"""`hf-instruct pipeline`: the whole InstructGPT recipe on one machine, with baselines and a report.

suite data → pretrain → midtrain → sft → reward → ppo (PPO-ptx) → ppo_no_ptx and dpo (the baselines) → evaluation
→ report,
each stage through the same `run_<stage>` function as its recipe, each output feeding the next. A finished stage
(its `all_results.json` written) is skipped on a re-run and an interrupted one resumes from its last checkpoint, so
re-running the same command after a crash finishes the job. The models are then compared on the suite's held-out
splits (per-family instruction accuracy, reward-model win rate against the SFT model) and on held-out pretraining
text (perplexity: the "alignment tax"), and `report.md` with plots lands in the output folder.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
import trl
import yaml
from tqdm.auto import tqdm

from . import __version__
from .data.suite import SuiteConfig, build_suite, export_suite
from .evaluation import evaluate_model, load_metric
from .evaluation.evaluator import SUITE_SPLITS, few_shot
from .hub import push_to_hub
from .markdown import table_cell
from .model_card import RUN_FILE, hardware, read_history, write_model_card
from .stages import STAGES

# run name -> stage; the order is the order they run in. midtrain (pretraining continued with instructions mixed in)
# runs when the YAML configures it; the base model of the comparison is the plain pretrain run.
RUNS = {
    "pretrain": "pretrain",
    "midtrain": "pretrain",
    "sft": "sft",
    "reward": "reward",
    "ppo": "ppo",
    "ppo_no_ptx": "ppo",
    "dpo": "dpo",
}
COMPARED = ("pretrain", "midtrain", "sft", "ppo_no_ptx", "ppo", "dpo")  # the models compared, base model first
# pretrain fields that change how many tokens a baseline reads (a baseline that sets none reads the base's tokens)
TOKEN_FIELDS = {"max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                "block_size", "train_files", "tokenizer_name_or_path", "vocab_size"}  # fmt: skip
FEW_SHOT = " (3-shot)"  # a base model asked with 3 solved examples of the same family before each question
HELD_OUT_DOCUMENTS = 64  # pretraining documents kept out of pretraining, for the alignment-tax perplexity


@dataclass
class PipelineConfig:
    """What `recipes/<setup>/pipeline.yaml` holds: the suite's size, each run's stage fields, the evaluation."""

    output_dir: str = "runs/pipeline"
    seed: int = 42
    suite: dict = field(default_factory=dict)  # SuiteConfig fields
    stages: dict = field(default_factory=dict)  # run name -> fields of its stage config (and `estimate_s`)
    # extra base models, e.g. 4x larger: run name -> pretrain fields that replace the pretrain stage's, so a baseline
    # sees the same corpus, tokenizer and tokens unless it says otherwise
    baselines: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)  # limit, max_new_tokens, batch_size
    push_to: str | None = None  # a Hub namespace: the final model goes to <namespace>/<output_dir name>

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> "PipelineConfig":
        """`extends: <another pipeline.yaml>` (relative to this one) starts from that file's keys."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        if "extends" in values:
            parent = Path(path).parent / values.pop("extends")
            values = {**yaml.safe_load(parent.read_text()), **values}
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}.")
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


def run_pipeline(config: PipelineConfig) -> Path:
    """Run every stage (skipping finished ones), evaluate every model, write the report; returns its path."""
    output_dir = Path(config.output_dir)
    data = prepare_data(config, output_dir / "data")
    configs = {name: stage_config(name, config, data, output_dir) for name in runs(config)}
    print_plan(config, configs)
    for name, stage in tqdm(runs(config).items(), desc="pipeline", unit="stage"):
        tqdm.write(f"pipeline: {name} ({stage})")
        run_stage(name, stage, configs[name])
    results = compare_models(config, data, output_dir)
    report = write_report(config, results, output_dir)
    if config.push_to:
        final = output_dir / "ppo"
        push_to_hub(final, f"{config.push_to}/{output_dir.name}", commit_message="hf-instruct pipeline: PPO-ptx")
    return report


def runs(config: PipelineConfig) -> dict[str, str]:
    """Run name -> stage, in running order: the pipeline's runs with the config's baselines after pretraining."""
    chosen = {name: stage for name, stage in RUNS.items() if name != "midtrain" or "midtrain" in config.stages}
    return {"pretrain": "pretrain", **dict.fromkeys(config.baselines, "pretrain"), **chosen}


def compared(config: PipelineConfig) -> tuple[str, ...]:
    """The rows of the comparison: each base model (the base, the baselines) asked zero-shot and then few-shot, then
    the tuned models."""
    bases = [row for base in (COMPARED[0], *config.baselines) for row in (base, f"{base}{FEW_SHOT}")]
    return (*bases, *[name for name in COMPARED[1:] if name in runs(config)])


def model_of(row: str) -> str:
    """The run whose model answers a row of the comparison ("pretrain (3-shot)" -> "pretrain")."""
    return row.removesuffix(FEW_SHOT)


def prepare_data(config: PipelineConfig, data_dir: Path) -> dict[str, Path]:
    """The suite as JSONL files (once), with the last pretraining documents held out for the perplexity."""
    files = {split: data_dir / f"{split}.jsonl" for split in ("pretrain", "sft", "comparisons", *SUITE_SPLITS)}
    files["pretrain_held_out"] = data_dir / "pretrain_held_out.jsonl"
    if all(path.is_file() for path in files.values()):
        return files
    suite = build_suite(SuiteConfig(**{"seed": config.seed, **config.suite}))
    documents = suite["pretrain"]
    kept = len(documents) - HELD_OUT_DOCUMENTS
    suite["pretrain"], held_out = documents.select(range(kept)), documents.select(range(kept, len(documents)))
    export_suite(suite, data_dir)
    held_out.to_json(files["pretrain_held_out"])
    return files


def stage_config(run: str, config: PipelineConfig, data: dict[str, Path], output_dir: Path):
    """The stage config of `run`: its inputs (suite data, previous outputs) and the YAML's fields for it."""
    template = "pretrain" if run in config.baselines else run  # a baseline is a pretrain run with its changes
    fields = {**(config.stages.get(template) or {}), **config.baselines.get(run, {})}
    fields.pop("estimate_s", None)
    run_dir = lambda name: str(output_dir / name)  # noqa: E731
    tuned = run_dir("midtrain" if "midtrain" in config.stages else "pretrain")  # where instruction tuning starts
    corpus = (config.stages.get("pretrain") or {}).get("train_files") or [str(data["pretrain"])]
    instructions = (config.stages.get("sft") or {}).get("train_files") or [str(data["sft"])]
    inputs = {  # the tokenizer also learns the SFT data's words; only midtrain trains on them
        "pretrain": dict(train_files=[str(data["pretrain"])], instruction_files=instructions),
        "midtrain": dict(model_name_or_path=run_dir("pretrain"), train_files=corpus, instruction_files=instructions),
        "sft": dict(model_name_or_path=tuned, train_files=[str(data["sft"])]),
        "reward": dict(model_name_or_path=run_dir("sft"), train_files=[str(data["comparisons"])],
                       demonstration_files=[str(data["sft"])]),
        "ppo": dict(model_name_or_path=run_dir("sft"), reward_model_path=run_dir("reward"),
                    train_files=[str(data["sft"])], ptx_files=[str(data["pretrain"])]),
        "ppo_no_ptx": dict(model_name_or_path=run_dir("sft"), reward_model_path=run_dir("reward"),
                           train_files=[str(data["sft"])], ptx_coef=0.0),
        "dpo": dict(model_name_or_path=run_dir("sft"), train_files=[str(data["comparisons"])]),
    }[template]  # fmt: skip
    if run in config.baselines:  # the base model's tokenizer, so the baseline reads the very same tokens
        inputs["tokenizer_name_or_path"] = run_dir("pretrain")
    config_class, _ = STAGES[RUNS[template]]
    defaults = dict(seed=config.seed, output_dir=run_dir(run), save_strategy="steps", save_steps=50,
                    save_total_limit=1, report_to="none", disable_tqdm=False, logging_steps=10)  # fmt: skip
    return config_class(**{**defaults, **inputs, **fields})  # the YAML may replace inputs (e.g. real data files)


def print_plan(config: PipelineConfig, configs: dict) -> None:
    """The stages, their steps and the time each took on a 2-core CPU (from the YAML), before anything runs."""
    lines = ["pipeline plan (times measured on 2 CPU cores):", "| stage | steps | estimated |", "|---|---|---|"]
    total = 0
    fields = {**config.stages, **config.baselines}
    for name, stage in configs.items():
        estimate = (fields.get(name) or {}).get("estimate_s")
        total += estimate or 0
        status = "done" if is_finished(stage.output_dir) else f"~{estimate / 60:.1f} min" if estimate else "?"
        lines.append(f"| {name} | {stage.max_steps if stage.max_steps > 0 else 'epochs'} | {status} |")
    lines.append(f"| evaluation | | ~{(config.evaluation.get('estimate_s') or 0) / 60:.1f} min |")
    total += config.evaluation.get("estimate_s") or 0
    print("\n".join(lines) + f"\ntotal ≈ {total / 60:.1f} min\n")


def is_finished(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / "all_results.json").is_file() and (Path(run_dir) / RUN_FILE).is_file()


def run_stage(name: str, stage: str, stage_config) -> None:
    """Run one stage unless it finished before (an interrupted one resumes from its last checkpoint)."""
    if is_finished(stage_config.output_dir):
        tqdm.write(f"pipeline: {name} finished before, skipped")
        return
    _, run = STAGES[stage]
    run(stage_config)


def compare_models(config: PipelineConfig, data: dict[str, Path], output_dir: Path) -> dict:
    """Held-out instruction accuracy, win rate against SFT (by the reward model) and pretraining perplexity."""
    results_file = output_dir / "comparison.json"
    cached = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if list(cached) == list(compared(config)):  # the same models compared before
        return cached
    evaluation = {"limit": 100, "max_new_tokens": 32, "batch_size": 32, **config.evaluation}
    evaluation.pop("estimate_s", None)
    splits = {
        split: datasets.load_dataset("json", data_files=str(data[split]), split="train") for split in SUITE_SPLITS
    }
    held_out_text = datasets.load_dataset("json", data_files=str(data["pretrain_held_out"]), split="train")["text"]
    perplexity, win_rate = load_metric("perplexity"), load_metric("win_rate")
    reward_model = str(output_dir / "reward")
    solved = datasets.load_dataset("json", data_files=str(data["sft"]), split="train")
    few_shot_splits = {  # compositions are never solved in training data: their shots come from the split itself
        split: few_shot(rows, rows if split == "held_out_compositions" else solved, seed=config.seed)
        for split, rows in splits.items()
    }
    results = {}
    for name in tqdm(compared(config), desc="evaluating", unit="model"):
        model_dir = output_dir / model_of(name)
        scores = evaluate_model(model_dir, few_shot_splits if name.endswith(FEW_SHOT) else splits, **evaluation)
        results[name] = {
            "parameters": read_history(model_dir)[-1]["parameters"],
            "splits": scores["splits"],
            "perplexity": results[model_of(name)]["perplexity"]
            if name.endswith(FEW_SHOT)
            else perplexity.compute(predictions=held_out_text, model_id=str(model_dir), max_length=512)[
                "mean_perplexity"
            ],  # fmt: skip
        }
    for split in SUITE_SPLITS:  # every model's answers against the SFT model's, to the same prompts
        sft_answers = results["sft"]["splits"][split]["answers"]
        prompts = [messages[:-1] for messages in splits[split]["messages"]][: len(sft_answers)]
        for name in compared(config):
            scores = results[name]["splits"][split]
            scores["win_rate_vs_sft"] = win_rate.compute(
                predictions=scores["answers"], references=sft_answers, prompts=prompts, reward_model=reward_model
            )["win_rate"]
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    return results


def write_report(config: PipelineConfig, results: dict, output_dir: Path) -> Path:
    """`report.md` and `accuracy.png`; the comparison also goes into the final (PPO-ptx) model's card."""
    plot_accuracy(results, output_dir / "accuracy.png")
    lines = ["# hf-instruct pipeline report", "", "## Results on held-out data", ""]
    header = ["model", "parameters", *[f"accuracy: {split.removeprefix('held_out_')}" for split in SUITE_SPLITS],
              "win rate vs SFT", "pretraining perplexity"]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, model in results.items():
        accuracies = [f"{model['splits'][split]['accuracy']:.3f}" for split in SUITE_SPLITS]
        win = sum(model["splits"][split]["win_rate_vs_sft"] for split in SUITE_SPLITS) / len(SUITE_SPLITS)
        row = [name, f"{model['parameters'] / 1e6:.2f} M", *accuracies, f"{win:.3f}", f"{model['perplexity']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    for name in config.baselines:
        lines += ["", headline(name, results, config.baselines[name])]
        lines += [headline(f"{name}{FEW_SHOT}", results, config.baselines[name])]
    lines += ["", "![accuracy by model and held-out split](accuracy.png)", ""]
    families = sorted({f for m in results.values() for f in m["splits"]["held_out_paraphrases"]["per_family"]})
    lines += ["## Accuracy per task family (held-out paraphrases)", "",
              "| family | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]  # fmt: skip
    for family in families:
        values = [f"{m['splits']['held_out_paraphrases']['per_family'].get(family, 0):.2f}" for m in results.values()]
        lines.append(f"| {family} | " + " | ".join(values) + " |")
    lines += ["", "## Sample answers (held-out paraphrases)", "", "| prompt | " + " | ".join(results) + " |",
              "|---" * (len(results) + 1) + "|"]  # fmt: skip
    samples = next(iter(results.values()))["splits"]["held_out_paraphrases"]["samples"]
    for index, sample in enumerate(samples):
        answers = [
            table_cell(m["splits"]["held_out_paraphrases"]["samples"][index]["answer"], 40) for m in results.values()
        ]
        lines.append(f"| {table_cell(sample['prompt'], 60)} | " + " | ".join(answers) + " |")
    lines += ["", "## Training curves", ""]
    lines += [
        f"![{name}]({name}/training_curves.png)"
        for name in runs(config)
        if (output_dir / name / "training_curves.png").is_file()
    ]
    lines += ["", "## Run", "", "| | |", "|---|---|"]
    for name in runs(config):  # as each stage recorded it, so a resumed pipeline reports the real times
        seconds = read_history(output_dir / name)[-1]["wall_time_s"]
        lines.append(f"| {name} wall time | {seconds / 60:.1f} min |")
    lines += [
        f"| seed | {config.seed} |",
        f"| hardware | {hardware()} |",
        f"| versions | hf-instruct {__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"torch {torch.__version__} |",
    ]
    report = output_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    record_comparison(output_dir / "ppo", results)
    return report


def headline(name: str, results: dict, fields: dict) -> str:
    """The InstructGPT headline for baseline `name` (its YAML `fields`): the small tuned model against a big base."""
    final, base = results["ppo"], results[name]
    scores = ", ".join(
        f"{split.removeprefix('held_out_')} {final['splits'][split]['accuracy']:.2f} against "
        f"{base['splits'][split]['accuracy']:.2f}"
        for split in SUITE_SPLITS
    )
    tokens = "" if set(fields) & TOKEN_FIELDS else " for the same tokens"
    return (
        f"The final model (PPO-ptx, {final['parameters'] / 1e6:.2f} M parameters) against {name} "
        f"({base['parameters'] / final['parameters']:.1f}x its parameters, pretrained on the same corpus{tokens}), "
        f"held-out accuracy: {scores}."
    )


def record_comparison(final_dir: Path, results: dict) -> None:
    """Put the held-out comparison into the final model's run record and re-render its card."""
    run_file = final_dir / RUN_FILE
    record = json.loads(run_file.read_text())
    record["history"][-1]["metrics"].update(
        {f"suite_accuracy/{split}": results["ppo"]["splits"][split]["accuracy"] for split in SUITE_SPLITS}
    )
    run_file.write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(final_dir)


def plot_accuracy(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(results)
    for offset, (name, model) in enumerate(results.items()):
        values = [model["splits"][split]["accuracy"] for split in SUITE_SPLITS]
        axis.bar([i + offset * width for i in range(len(SUITE_SPLITS))], values, width, label=name)
    axis.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(SUITE_SPLITS))], [s.removeprefix("held_out_") for s in SUITE_SPLITS]
    )
    axis.set_ylabel("instruction accuracy")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
