"""`hf-instruct pipeline`: the whole InstructGPT recipe on one machine, with baselines and a report.

suite data → pretrain → midtrain → sft → reward → ppo (PPO-ptx) → ppo_no_ptx, dpo, grpo (the baselines) → evaluation
→ report, each stage through the same `run_<stage>` function as its recipe, each output feeding the next. A stage's
fields come from the pipeline YAML, which may start it from a stage recipe (`config: <stage YAML>`), and are parsed as
`hf-instruct <stage> --config` parses its file: a typo fails before anything runs, naming the file and the stage.
A finished stage (its metrics, run record and a complete model written) is skipped on a re-run and an incomplete one
resumes from its last complete checkpoint, so re-running the same command after a crash finishes the job, and
re-running a finished pipeline changes no file. A stage counts as finished only while its settings and inputs (the
models and data it read, by fingerprint) are those its run record holds: an edited setting, another seed or a
retrained model upstream re-runs it and every stage downstream, and the plan says why. The models are then compared
on every row of the suite's held-out splits (instruction accuracy with its 95 % interval beside the floor trivial
answer rules reach, per split and per task family; the paired difference from the SFT model on the same prompts; the
win rate over SFT as the suite's verifier judges it, the reward model's beside it) and on held-out pretraining text
(perplexity: the "alignment tax"), and `report.md` with plots lands in the output folder; the comparison is computed
again when a model or the evaluation settings changed. With `evaluation: {best_of_n: N}` the SFT model is also
scored answering with the best of N samples by the reward model, the simplest alternative to RL.
"""

import dataclasses
import hashlib
import inspect
import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
import trl
import yaml
from tqdm.auto import tqdm

from ._version import __version__
from .checkpoints import saved_model_problem
from .data.suite import SUITE_FILE, SuiteConfig, build_suite, export_suite
from .evaluation import evaluate_model, load_metric
from .evaluation.evaluator import SUITE_SPLITS, few_shot
from .evaluation.statistics import paired_difference, pairwise_win_rates
from .hub import push_to_hub
from .model_card import RUN_FILE, hardware, read_history, render_model_card
from .precision import ProbeResult, ProbeShapes, default_bf16, probe
from .stages import STAGES, CollectComparisonsConfig
from .stages.collect_comparisons import COMPARISONS_FILE, collection_problem
from .stages.parsing import did_you_mean, parse_fields, read_config_file
from .staleness import INPUT_FIELDS, lock_folder, recorded_run, value_changes, why_stale
from .utils import load_reward_model, markdown_table, score_chats, table_cell

ALWAYS, BY_DEFAULT, WHEN_NAMED = "always", "by default", "when named"  # when a run runs (`Run.when`)


@dataclass(frozen=True)
class Run:
    """A run of the pipeline: the stage it runs; `when` it runs (ALWAYS: the chain to the final model, which no
    `false` turns off; BY_DEFAULT: unless the YAML's `stages` sets it to false; WHEN_NAMED: only when `stages` names
    it); its `row` among the compared models (the base model first; None: not compared); what it `reads`: its
    models and data, given where they are (`Inputs`)."""

    stage: str
    when: str
    row: int | None
    reads: Callable[["Inputs"], dict]


# The pipeline, in the order its runs run. midtrain is pretraining continued with instructions mixed in;
# collect_comparisons ranks the SFT model's answers with the simulated labeler (reward and dpo then read them instead
# of the suite's synthetic comparisons); ppo is the final model (PPO-ptx), ppo_no_ptx, dpo and grpo its baselines.
RUNS = {
    # the tokenizer also learns the SFT data's words; only midtrain trains on them
    "pretrain": Run(
        "pretrain",
        ALWAYS,
        row=0,
        reads=lambda at: dict(train_files=at.suite("pretrain"), instruction_files=at.instructions),
    ),
    "midtrain": Run(
        "pretrain",
        WHEN_NAMED,
        row=1,
        reads=lambda at: dict(
            model_name_or_path=at.run("pretrain"), train_files=at.corpus, instruction_files=at.instructions
        ),
    ),
    "sft": Run("sft", ALWAYS, row=2, reads=lambda at: dict(model_name_or_path=at.tuned, train_files=at.suite("sft"))),
    # its prompts carry the checks the simulated labeler ranks answers by
    "collect_comparisons": Run(
        "collect_comparisons",
        WHEN_NAMED,
        row=None,
        reads=lambda at: dict(model_name_or_path=at.run("sft"), train_files=at.suite("comparison_prompts")),
    ),
    "reward": Run(
        "reward",
        ALWAYS,
        row=None,
        reads=lambda at: dict(
            model_name_or_path=at.run("sft"), train_files=at.comparisons, demonstration_files=at.suite("sft")
        ),
    ),
    "ppo": Run(
        "ppo",
        ALWAYS,
        row=4,
        reads=lambda at: dict(
            model_name_or_path=at.run("sft"),
            reward_model_path=at.run("reward"),
            train_files=at.rl_prompts,
            ptx_files=at.suite("pretrain"),
        ),
    ),
    "ppo_no_ptx": Run(  # PPO without the pretraining mix
        "ppo", BY_DEFAULT, row=3, reads=lambda at: {**RUNS["ppo"].reads(at), "ptx_coef": 0.0, "ptx_files": None}
    ),
    "dpo": Run(
        "dpo", BY_DEFAULT, row=5, reads=lambda at: dict(model_name_or_path=at.run("sft"), train_files=at.comparisons)
    ),
    "grpo": Run(
        "grpo",
        WHEN_NAMED,
        row=6,
        reads=lambda at: dict(
            model_name_or_path=at.run("sft"), reward_model_path=at.run("reward"), train_files=at.rl_prompts
        ),
    ),
}
# pretrain fields that change how many tokens a baseline reads (a baseline that sets none reads the base's tokens)
TOKEN_FIELDS = {
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "block_size",
    "train_files",
    "tokenizer_name_or_path",
    "vocab_size",
}
FEW_SHOT = " (3-shot)"  # a base model asked with 3 solved examples of the same family before each question
# the SFT model answering with the best of n samples by the reward model (`evaluation: {best_of_n: n}`)
BEST_OF_N = " (best-of-{n})"
# A base model (pretrain, a baseline) is asked in the plain question-and-answer text its corpus holds, not the chat
# format it never saw, so that "the base cannot follow instructions" is measured, not a format artefact.
BASE_PROMPT_FORMAT = "plain"
HELD_OUT_DOCUMENTS = 64  # pretraining documents kept out of pretraining, for the alignment-tax perplexity
# comparison.json's layout and what it measures (docs/evaluation.md); a cached comparison of another is recomputed.
# 3: the base rows asked in plain question-and-answer text, the floors' rules reading the checks' fields
# 4: the best-of-n row's splits also hold "any_sample_correct"
# 5: each model also holds "pooled": the held-out splits as one set of prompts against SFT
COMPARISON_SCHEMA = 5
# the `estimates` key of the precision probe's speed (`python -m hf_instruct.precision`: training tokens/s at the
# default model's shapes) on the machine the estimates were measured on; the plan scales them by this machine's
REFERENCE_SPEED = "reference_speed"
# what every stage of the pipeline does unless its fields say otherwise: frequent small checkpoints, a log every 10
# steps and the trainers' progress bars, no trackers
STAGE_DEFAULTS = dict(
    save_strategy="steps", save_steps=50, save_total_limit=1, report_to="none", disable_tqdm=False, logging_steps=10
)
# evaluate_model's arguments that the pipeline sets itself (the rest are the YAML's `evaluation:` keys)
PIPELINE_SETS = (
    "model_path",
    "splits",
    "reward_model",
    "baseline_path",
    "demonstrations",
    "prompt_format",
    "best_of_n_reward_model",
    "seed",
)
PREVIOUS = "previous"  # where a stale run's folder is moved before it runs again (one generation kept)


@dataclass
class PipelineConfig:
    """What `recipes/<setup>/pipeline.yaml` holds: the suite's size, each run's stage fields, the evaluation, the
    time each run takes and where the final model goes."""

    output_dir: str = "runs/pipeline"
    seed: int = 42
    suite: dict = field(default_factory=dict)  # SuiteConfig fields
    # run name -> fields of its stage config; `config: <stage YAML>` starts from a stage recipe (see `stage_config`);
    # `false` turns off a run the YAML it extends names (any run but those that run ALWAYS)
    stages: dict = field(default_factory=dict)
    # extra base models, e.g. 4x larger: run name -> pretrain fields that replace the pretrain stage's, so a baseline
    # sees the same corpus, tokenizer and tokens unless it says otherwise
    baselines: dict = field(default_factory=dict)
    # limit (default: every row), max_new_tokens, batch_size; best_of_n (default: no best-of-n row) and
    # best_of_n_temperature (default 1.0)
    evaluation: dict = field(default_factory=dict)
    # run name or "evaluation" -> seconds it took on 2 CPU cores; "reference_speed" -> that machine's probe speed
    estimates: dict = field(default_factory=dict)
    push_to_hub: bool = False  # push the final (PPO-ptx) model to the Hub when done
    hub_model_id: str | None = None  # "namespace/name" or "name" (the token's user); default: output_dir's name
    source: str = "the pipeline config"  # the YAML file it came from, for error messages (not a YAML key)

    def runs_stage(self, run: str) -> bool:
        """Whether the pipeline runs `run` (`Run.when`): a WHEN_NAMED run when `stages` names it, the others unless
        `stages` sets them to false."""
        return self.stages.get(run) is not False and (RUNS[run].when != WHEN_NAMED or run in self.stages)

    def suite_config(self) -> SuiteConfig:
        """The suite every run reads, seeded by the pipeline's seed."""
        return SuiteConfig(**{"seed": self.seed, **self.suite})

    def __post_init__(self):
        """A misspelt run name would be left out without a word; the runs' fields are parsed by `stage_config`."""
        known = {"stages": list(RUNS), "estimates": [*RUNS, *self.baselines, "evaluation", REFERENCE_SPEED]}
        for section, names in known.items():
            unknown = [name for name in getattr(self, section) if name not in names]
            if unknown:
                hint = did_you_mean(unknown[0], names)
                raise ValueError(f"{self.source}: {section}: unknown run {unknown[0]!r}{f' ({hint})' if hint else ''}")
        required = [name for name, run in RUNS.items() if run.when == ALWAYS]
        if off := [name for name in required if self.stages.get(name) is False]:
            raise ValueError(
                f"{self.source}: stages: {off[0]}: false: {', '.join(required)} lead to the final model and always "
                "run; `false` turns off the other runs."
            )
        # the suite's keys are SuiteConfig's fields, the evaluation's those of evaluate_model's settings the pipeline
        # leaves to the YAML: a typo fails now, not when the data is built or after every stage has run
        self.check_keys("suite", [field.name for field in dataclasses.fields(SuiteConfig)])
        self.check_keys(
            "evaluation", [name for name in inspect.signature(evaluate_model).parameters if name not in PIPELINE_SETS]
        )
        best_of_n = self.evaluation.get("best_of_n")
        if best_of_n is not None and (not isinstance(best_of_n, int) or isinstance(best_of_n, bool) or best_of_n < 1):
            raise ValueError(
                f"{self.source}: evaluation: best_of_n: {best_of_n!r} is not valid: expected the samples per prompt "
                "(an integer >= 1), or leave it out for no best-of-n row."
            )
        temperature = self.evaluation.get("best_of_n_temperature")
        if temperature is not None and (
            best_of_n is None or not isinstance(temperature, int | float) or temperature <= 0
        ):
            raise ValueError(
                f"{self.source}: evaluation: best_of_n_temperature: {temperature!r} is not valid: expected a number "
                "> 0, with best_of_n set."
            )

    def check_keys(self, section: str, known: list[str]) -> None:
        """Every key of `section` (a mapping) is one of `known`; else the first unknown one, with the closest name."""
        if unknown := [name for name in getattr(self, section) if name not in known]:
            hint = did_you_mean(unknown[0], known, f"expected some of {', '.join(known)}")
            raise ValueError(f"{self.source}: {section}: unknown key {unknown[0]!r} ({hint})")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> "PipelineConfig":
        """The pipeline of a YAML file (see `read_pipeline_yaml`), with the `overrides` that are not None."""
        values = read_pipeline_yaml(Path(path))
        keys = set(cls.__dataclass_fields__) - {"source"}
        unknown = set(values) - keys
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected {sorted(keys)}.")
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}}, source=str(path))


def read_pipeline_yaml(path: Path) -> dict:
    """A pipeline YAML's keys, its stages' `config:` paths made relative to the working directory. `extends:
    <another pipeline YAML>` (relative to this one) starts from that file's keys: mappings are updated key by key at
    every depth (so `stages: {sft: {learning_rate: 1.0e-4}}` changes that field and keeps the stage's others), other
    values replaced."""
    values = yaml.safe_load(path.read_text()) or {}
    for section in ("stages", "baselines"):
        if values.get(section):
            values[section] = {name: with_config_path(fields, path) for name, fields in values[section].items()}
    if "extends" not in values:
        return values
    return updated(read_pipeline_yaml(path.parent / values.pop("extends")), values)


def updated(parent: dict, values: dict) -> dict:
    """`parent` with `values` laid over it: a mapping in both is updated key by key (recursively), the rest
    replaced."""
    merged = {**parent, **values}
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(parent.get(key), dict):
            merged[key] = updated(parent[key], value)
    return merged


def with_config_path(fields: dict | None, pipeline_file: Path) -> dict | None:
    """A run's `fields` with `config:` (a stage YAML, relative to the pipeline YAML) relative to the working
    directory, as the stage command reads it."""
    if not fields or "config" not in fields:
        return fields
    return {**fields, "config": os.path.normpath(pipeline_file.parent / fields["config"])}


def run_pipeline(config: PipelineConfig) -> Path:
    """Run every stage (skipping finished ones), evaluate every model, write the report, put the final model's
    held-out accuracy into its card, push it if asked; returns the report's path."""
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} is a file, not a folder: choose another --output_dir.")
    data = data_files(output_dir / "data")
    configs = {name: stage_config(name, config, data, output_dir) for name in runs(config)}  # before any write
    output_dir.mkdir(parents=True, exist_ok=True)
    lock_folder(output_dir)  # one pipeline at a time in a folder
    data_changed = prepare_data(config, data)
    plans = plan_runs(configs)
    scale = print_plan(config, configs, plans, data_changed)
    estimated, took = 0.0, 0.0  # the runs so far that ran and have an estimate: their scaled estimates, their times
    for index, (name, stage) in enumerate(tqdm(runs(config).items(), desc="pipeline", unit="stage")):
        tqdm.write(f"pipeline: {name} ({stage})")
        start = time.perf_counter()
        ran = run_stage(name, stage, configs[name])
        if ran and (estimate := scale * (config.estimates.get(name) or 0)):
            seconds = time.perf_counter() - start
            estimated, took = estimated + estimate, took + seconds
            left = scale * seconds_to_run(config, plans, list(plans)[index + 1 :]) * took / estimated
            tqdm.write(
                f"pipeline: {name} took {seconds / 60:.1f} min (estimated {estimate / 60:.1f}); at the pace so far "
                f"(×{took / estimated:.2f} the plan) ≈ {left / 60:.1f} min left"
            )
    results = compare_models(config, data, output_dir)
    report = write_report(config, results, output_dir)
    record_comparison(output_dir / "ppo", results)
    if config.push_to_hub:  # a repo name without a namespace goes to the token's user
        repo_id = config.hub_model_id or output_dir.name
        push_to_hub(output_dir / "ppo", repo_id, commit_message="hf-instruct pipeline: PPO-ptx")
    return report


def runs(config: PipelineConfig) -> dict[str, str]:
    """Run name -> stage, in running order: the pipeline's runs with the config's baselines after pretraining."""
    chosen = {name: run.stage for name, run in RUNS.items() if config.runs_stage(name)}
    return {"pretrain": "pretrain", **dict.fromkeys(config.baselines, "pretrain"), **chosen}


def compared(config: PipelineConfig) -> tuple[str, ...]:
    """The rows of the comparison: each base model (the base, the baselines) asked zero-shot and then few-shot, then
    the tuned models in the order of their `Run.row`, SFT's best-of-n row (when the evaluation asks for one) after
    SFT."""
    rows = [name for name in runs(config) if name in RUNS and RUNS[name].row is not None]
    base, *tuned = sorted(rows, key=lambda name: RUNS[name].row)
    bases = [row for model in (base, *config.baselines) for row in (model, f"{model}{FEW_SHOT}")]
    if row := best_of_n_row(config):
        tuned.insert(tuned.index("sft") + 1, row)
    return (*bases, *tuned)


def best_of_n_row(config: PipelineConfig) -> str | None:
    """The row of SFT answering with the best of `evaluation.best_of_n` samples ("sft (best-of-4)"); None without."""
    n = config.evaluation.get("best_of_n")
    return f"sft{BEST_OF_N.format(n=n)}" if n else None


def model_of(row: str) -> str:
    """The run whose model answers a row of the comparison ("pretrain (3-shot)" -> "pretrain", "sft (best-of-4)" ->
    "sft")."""
    return re.sub(r" \(best-of-\d+\)$", "", row.removesuffix(FEW_SHOT))


def data_files(data_dir: Path) -> dict[str, Path]:
    """Where `prepare_data` puts the suite: split -> JSONL file."""
    splits = ("pretrain", "sft", "comparisons", "comparison_prompts", "rl_prompts", *SUITE_SPLITS)
    files = {split: data_dir / f"{split}.jsonl" for split in splits}
    files["pretrain_held_out"] = data_dir / "pretrain_held_out.jsonl"
    files["suite"] = data_dir / SUITE_FILE  # names the suite, for `hf-instruct evaluate` and `data export`
    return files


def prepare_data(config: PipelineConfig, files: dict[str, Path]) -> str | None:
    """The suite as the JSONL `files`, with the last pretraining documents held out for the perplexity, and the
    `suite.json` that names it: built once, and again when the suite's settings (its seed, its sizes) differ from
    those it was built with. Returns why it was built again (None: it was not, or built for the first time)."""
    suite_config = config.suite_config()
    settings = dataclasses.asdict(suite_config)
    record = files["pretrain"].parent / SUITE_FILE
    recorded = json.loads(record.read_text()) if record.is_file() else None
    complete = all(path.is_file() for path in files.values())
    if complete and recorded == settings:
        return None
    reason = None
    if complete and recorded is None:
        reason = "the settings it was built with were not recorded"
    elif complete:
        reason = f"suite settings changed ({', '.join(value_changes(recorded, settings))})"
    suite = build_suite(suite_config)
    documents = suite["pretrain"]
    kept = len(documents) - HELD_OUT_DOCUMENTS
    suite["pretrain"], held_out = documents.select(range(kept)), documents.select(range(kept, len(documents)))
    export_suite(suite, files["pretrain"].parent, suite_config)
    held_out.to_json(files["pretrain_held_out"])
    return reason


def stage_config(run: str, config: PipelineConfig, data: dict[str, Path], output_dir: Path):
    """The stage config of `run`, parsed as `hf-instruct <stage> --config` parses its file. Its fields, each layer
    replacing the one before: `STAGE_DEFAULTS`; the stage recipe its entry names with `config:`; the run's place in
    the pipeline (seed, output_dir, `run_inputs`); the entry's own fields. A recipe's models, data and output folder
    are those of the recipe run alone, so the pipeline's replace them; the entry's fields replace anything (e.g. real
    data files instead of the suite's)."""
    template = "pretrain" if run in config.baselines else run  # a baseline is a pretrain run with its changes
    fields = {**(config.stages.get(template) or {}), **config.baselines.get(run, {})}
    recipe = fields.pop("config", None)
    section = f"baselines.{run}" if run in config.baselines else f"stages.{run}"
    where = f"{config.source}: {section}" + (f" (config: {recipe})" if recipe else "")
    if recipe and not Path(recipe).is_file():
        raise FileNotFoundError(f"{where}: no such file.")
    recipe_fields = read_config_file(recipe, where) if recipe else {}
    place = dict(seed=config.seed, output_dir=str(output_dir / run), **run_inputs(run, config, data, output_dir))
    config_class = STAGES[RUNS[template].stage].config_class
    return parse_fields(config_class, {**STAGE_DEFAULTS, **recipe_fields, **place, **fields}, where)


def run_inputs(run: str, config: PipelineConfig, data: dict[str, Path], output_dir: Path) -> dict:
    """What `run` reads (`Run.reads`): the models it starts from (earlier runs' outputs) and its data (the suite's
    files). A baseline reads what pretrain reads, with the base model's tokenizer: the very same tokens."""
    at = Inputs(config, data, output_dir)
    if run in config.baselines:
        return {**RUNS["pretrain"].reads(at), "tokenizer_name_or_path": at.run("pretrain")}
    return RUNS[run].reads(at)


@dataclass(frozen=True)
class Inputs:
    """Where a run's inputs are: the earlier runs' output folders, the suite's files, and what the pipeline YAML
    chose among them."""

    config: PipelineConfig
    data: dict[str, Path]
    output_dir: Path

    def run(self, name: str) -> str:
        return str(self.output_dir / name)

    def suite(self, split: str) -> list[str]:
        return [str(self.data[split])]

    @property
    def tuned(self) -> str:
        """Where instruction tuning starts: the midtrained model when midtrain runs, else the pretrained one."""
        return self.run("midtrain" if self.config.runs_stage("midtrain") else "pretrain")

    @property
    def corpus(self) -> list[str]:
        """The pretraining text midtraining reads: the pretrain run's own (a setup's real data), else the suite's."""
        return (self.config.stages.get("pretrain") or {}).get("train_files") or self.suite("pretrain")

    @property
    def instructions(self) -> list[str]:
        """The demonstrations pretraining's tokenizer and midtraining read: the sft run's own, else the suite's."""
        return (self.config.stages.get("sft") or {}).get("train_files") or self.suite("sft")

    @property
    def comparisons(self) -> list[str]:
        """What reward and dpo learn from: the collected comparisons when collect_comparisons runs, else the
        suite's synthetic ones."""
        if self.config.runs_stage("collect_comparisons"):
            return [str(self.output_dir / "collect_comparisons" / COMPARISONS_FILE)]
        return self.suite("comparisons")

    @property
    def rl_prompts(self) -> list[str]:
        """The prompts of the RL methods (PPO and GRPO see the same), broader than the demonstrations."""
        return self.suite("rl_prompts")


@dataclass
class RunPlan:
    """What the pipeline does with a run: "skip" (finished and up to date), "run" (never run), "resume" (an
    incomplete run, from its last complete checkpoint) or "re-run" (stale: from the start); `reason` says why."""

    action: str
    reason: str = ""


def plan_runs(configs: dict) -> dict[str, RunPlan]:
    """Run name -> what the pipeline will do with it (`plan_run`), for the plan printed before anything runs. A run
    that reads an earlier run's output (among its inputs) which runs again will see a new model, so it is counted as
    re-run too, as is everything downstream; each stage decides again when its turn comes (`run_stage`)."""
    plans, causes = {}, {}  # causes: a run that will run again -> the runs at the root of it
    for name, config in configs.items():
        upstream = [other for other in reads_from(config, configs) if other in plans]
        changed = sorted(
            {cause for other in upstream if other in causes for cause in causes[other]}, key=list(configs).index
        )
        if changed and Path(config.output_dir).is_dir():
            plans[name] = RunPlan(
                "re-run", f"input changed ({', '.join(changed)} run{'s' if len(changed) == 1 else ''} again)"
            )
        else:  # the inputs of a run downstream of an incomplete one are compared once that one has finished
            plans[name] = plan_run(config, check_inputs=all(plans[other].action == "skip" for other in upstream))
        if changed or plans[name].action in ("run", "re-run"):
            causes[name] = changed or [name]
    return plans


def reads_from(config, configs: dict) -> list[str]:
    """The runs whose output folder, or a file in it, `config` reads (its model, tokenizer, reward model, data)."""
    values = [getattr(config, field, None) for field in INPUT_FIELDS]
    read = {
        os.path.normpath(path) for value in values if value for path in ([value] if isinstance(value, str) else value)
    }
    folders = {name: os.path.normpath(other.output_dir) for name, other in configs.items()}
    return [name for name, folder in folders.items() if any(folder in (path, os.path.dirname(path)) for path in read)]


def plan_run(config, check_inputs: bool = True) -> RunPlan:
    """What to do with one run now: never run, stale (its settings, or with `check_inputs` its inputs, differ from
    those its run record holds), incomplete, or finished and up to date."""
    if not Path(config.output_dir).is_dir():
        return RunPlan("run", "not run yet")
    if reason := why_stale(recorded_run(config.output_dir), config, check_inputs):
        return RunPlan("re-run", reason)
    if problem := (collection_problem if is_collection(config) else unfinished)(config.output_dir):
        return RunPlan("resume", f"incomplete ({problem})")
    return RunPlan("skip")


def print_plan(config: PipelineConfig, configs: dict, plans: dict[str, RunPlan], data_changed: str | None) -> float:
    """The stages, their steps and the time each took on a 2-core CPU (the YAML's `estimates`, scaled to this machine
    by `machine_scale`), before anything runs, then why each stage that ran before runs again; the total counts only
    the stages still to run (a resumed run skips the finished ones). Returns the scale."""
    scale, scaled_how = machine_scale(config.estimates)
    rows = []
    for name, stage in configs.items():
        estimate = config.estimates.get(name)
        status = "done" if plans[name].action == "skip" else f"~{scale * estimate / 60:.1f} min" if estimate else "?"
        if is_collection(stage):  # no training steps: how many prompts it answers
            steps = f"{stage.max_prompts or 'all'} prompts"
        else:
            steps = str(stage.max_steps if stage.max_steps > 0 else "epochs")
        rows.append([name, steps, status])
    rows.append(["evaluation", "", f"~{scale * config.estimates.get('evaluation', 0) / 60:.1f} min"])
    measured = "times measured on 2 CPU cores" + (", scaled to this machine" if scale != 1 else "")
    lines = [f"pipeline plan ({measured}):", *markdown_table(["stage", "steps", "estimated"], rows)]
    if data_changed:
        lines.append(f"data: {data_changed}: built again")
    reasons = {}  # one line for the runs with the same reason ("reward, ppo: input changed (sft runs again): re-run")
    for name, plan in plans.items():
        if plan.action in ("re-run", "resume") or (plan.action == "run" and plan.reason != "not run yet"):
            reasons.setdefault(f"{plan.reason}: {'resume' if plan.action == 'resume' else 're-run'}", []).append(name)
    lines += [f"{', '.join(names)}: {reason}" for reason, names in reasons.items()]
    total = scale * seconds_to_run(config, plans, list(plans))
    print("\n".join(lines) + f"\ntotal ≈ {total / 60:.1f} min ({scaled_how})\n")
    return scale


def seconds_to_run(config: PipelineConfig, plans: dict[str, RunPlan], names: list[str]) -> float:
    """The estimated seconds of the runs among `names` that the plan does not skip, and of the evaluation."""
    runs_left = [name for name in names if plans[name].action != "skip"]
    return sum(config.estimates.get(name) or 0 for name in runs_left) + config.estimates.get("evaluation", 0)


def machine_scale(estimates: dict) -> tuple[float, str]:
    """How much longer than its `estimates` the pipeline takes on this machine, and the words that say how that was
    found: a CPU runs the precision probe at the default model's shapes (under a second there, once per process) in
    the precision it chooses for them, and the estimates are scaled by their machine's speed (`reference_speed`)
    over this one's."""
    reference = estimates.get(REFERENCE_SPEED)
    if reference is None or torch.cuda.is_available():
        return estimate_scale(reference, None, bf16=False)
    shapes = ProbeShapes()
    return estimate_scale(reference, probe(shapes), bf16=default_bf16(shapes).bf16)


def estimate_scale(reference_speed: float | None, result: ProbeResult | None, bf16: bool) -> tuple[float, str]:
    """The factor for the estimates (the reference machine's probe speed over this one's in the precision chosen,
    `bf16` or fp32) and the line of the plan that says so; 1 without a reference speed or a CPU probe, and why."""
    if reference_speed is None:
        return 1.0, f"estimates unscaled: no estimates.{REFERENCE_SPEED} to compare this machine with"
    if result is None:
        return 1.0, "estimates unscaled: they were measured on CPUs, and this machine trains on its GPU"
    speed = result.speed(bf16)
    scale = reference_speed / speed
    return scale, (
        f"estimates scaled ×{scale:.2f} by a {result.seconds:.1f} s probe on this machine: {speed / 1e3:.1f} k "
        f"training tokens/s at the default model's shapes in {'bf16' if bf16 else 'fp32'}, against "
        f"{reference_speed / 1e3:.1f} k where they were measured"
    )


def is_collection(stage_config) -> bool:
    """Whether a run writes comparisons (data), not a model."""
    return isinstance(stage_config, CollectComparisonsConfig)


def unfinished(run_dir: str | os.PathLike) -> str | None:
    """Why the stage in `run_dir` has not finished (None: it has). Its model is checked, not only its last files:
    a model deleted or cut off by a kill would otherwise be skipped and compared."""
    if problem := saved_model_problem(run_dir):
        return problem
    if not (Path(run_dir) / "all_results.json").is_file():
        return "all_results.json is missing"
    if not read_history(run_dir):
        return f"{RUN_FILE} holds no run record"
    return None


def run_stage(name: str, stage: str, stage_config) -> bool:
    """Run one stage as `plan_run` finds it now: skip it (finished and up to date), resume it from its last complete
    checkpoint (incomplete), or run it from the start, a stale run's folder moved to `previous/<name>` first. Returns
    whether it ran."""
    plan = plan_run(stage_config)
    if plan.action == "skip":
        tqdm.write(f"pipeline: {name} finished before, skipped")
        return False
    if plan.action == "resume":
        tqdm.write(f"pipeline: {name} is {plan.reason}; running it again")
    if plan.action == "re-run":
        run_dir = Path(stage_config.output_dir)
        previous = run_dir.parent / PREVIOUS / name
        shutil.rmtree(previous, ignore_errors=True)
        previous.parent.mkdir(exist_ok=True)
        run_dir.rename(previous)
        tqdm.write(f"pipeline: {name}: {plan.reason}; running it again from the start (the old run is in {previous})")
    STAGES[stage].run(stage_config)
    return True


def compare_models(config: PipelineConfig, data: dict[str, Path], output_dir: Path) -> dict:
    """Held-out instruction accuracy (with intervals and trivial-rule floors), paired differences and win rates
    against SFT, and pretraining perplexity. Kept in `comparison.json` with the fingerprints of the models it read
    and the evaluation settings, so it is computed again only when one of them changed."""
    results_file = output_dir / "comparison.json"
    cached = json.loads(results_file.read_text()) if results_file.is_file() else {}
    # every model the comparison reads: the compared ones and the reward model that judges the win rates
    models = {
        name: fingerprint(output_dir / name) for name in dict.fromkeys([*map(model_of, compared(config)), "reward"])
    }
    evaluation = {"max_new_tokens": 32, "batch_size": 32, **config.evaluation}  # every row unless `limit` says
    # how every model answers, and how the best-of-n row samples
    answering = {name: value for name, value in evaluation.items() if not name.startswith("best_of_n")}
    sampling = {name: value for name, value in evaluation.items() if name.startswith("best_of_n")}
    key = {"schema": COMPARISON_SCHEMA, "models": models, "evaluation": evaluation}
    if {k: cached.get(k) for k in key} == key and list(cached.get("results", {})) == list(compared(config)):
        return cached["results"]  # the same models compared before, the same way
    splits = {
        split: datasets.load_dataset("json", data_files=str(data[split]), split="train") for split in SUITE_SPLITS
    }
    held_out_text = datasets.load_dataset("json", data_files=str(data["pretrain_held_out"]), split="train")["text"]
    perplexity = load_metric("perplexity")
    reward_model = str(output_dir / "reward")
    solved = datasets.load_dataset("json", data_files=str(data["sft"]), split="train")
    few_shot_splits = {  # held-out compositions are never solved in training data: their shots come from the split
        split: few_shot(rows, rows if split == "held_out_compositions" else solved, seed=config.seed)
        for split, rows in splits.items()
    }
    base_models = {model_of(row) for row in compared(config) if row.endswith(FEW_SHOT)}  # the base, the baselines
    results = {}
    for name in tqdm(compared(config), desc="evaluating", unit="model"):
        model_dir = output_dir / model_of(name)
        prompt_format = BASE_PROMPT_FORMAT if model_of(name) in base_models else "chat"
        chosen = few_shot_splits if name.endswith(FEW_SHOT) else splits
        best_of_n = {}  # n samples per prompt, the reward model keeps the best
        if name == best_of_n_row(config):
            best_of_n = dict(**sampling, best_of_n_reward_model=reward_model, seed=config.seed)
        scores = evaluate_model(
            model_dir, chosen, demonstrations=solved, prompt_format=prompt_format, **answering, **best_of_n
        )
        if name != model_of(name):  # the plain row's model: the same perplexity
            text_perplexity = results[model_of(name)]["perplexity"]
        else:
            text_perplexity = perplexity.compute(predictions=held_out_text, model_id=str(model_dir), max_length=512)
            text_perplexity = text_perplexity["mean_perplexity"]
        results[name] = {
            "parameters": read_history(model_dir)[-1]["parameters"],
            "splits": scores["splits"],
            "perplexity": text_perplexity,
        }
    judge = load_reward_model(reward_model)  # loaded once for every model and split

    def rewards_of(prompts: list, answers: list[str]) -> list[float]:
        return score_chats(*judge, prompts, answers, evaluation["batch_size"])

    pooled = {name: {"answers": [], "correct": [], "rewards": []} for name in compared(config)}
    for split in SUITE_SPLITS:  # every model's answers against the SFT model's, to the same prompts
        sft = results["sft"]["splits"][split]
        prompts = [messages[:-1] for messages in splits[split]["messages"]][: len(sft["answers"])]
        sft_rewards = rewards_of(prompts, sft["answers"])
        for name in compared(config):
            scores = results[name]["splits"][split]
            rewards = sft_rewards if name == "sft" else rewards_of(prompts, scores["answers"])
            scores.update(against_sft(scores["answers"], scores["correct"], rewards, sft, sft_rewards))
            pooled[name]["answers"] += scores["answers"]
            pooled[name]["correct"] += scores["correct"]
            pooled[name]["rewards"] += rewards
    for name in compared(config):  # the held-out splits as one set of prompts (the learning-from-feedback findings)
        rows = pooled[name]
        results[name]["pooled"] = {
            "accuracy": sum(rows["correct"]) / len(rows["correct"]),
            **against_sft(**rows, sft=pooled["sft"], sft_rewards=pooled["sft"]["rewards"]),
        }
    results_file.write_text(json.dumps({**key, "results": results}, indent=2) + "\n")
    return results


def against_sft(answers: list, correct: list, rewards: list, sft: dict, sft_rewards: list) -> dict:
    """A model's answers against the SFT model's to the same prompts: the paired difference in accuracy, the
    verifier's win rate, the reward model's, and its agreement with the verifier."""
    pairs = pairwise_win_rates(answers, sft["answers"], correct, sft["correct"], rewards, sft_rewards)
    return {
        "vs_sft": paired_difference(correct, sft["correct"]),
        "win_rate_vs_sft": pairs["win_rate"],  # the verifier's
        "reward_model_win_rate_vs_sft": pairs["reward_model_win_rate"],
        "reward_model_agreement_vs_sft": pairs["reward_model_agreement"],
        "pairs_vs_sft": pairs["pairs"],
    }


def fingerprint(model_dir: Path) -> dict[str, str]:
    """The SHA-256 of each weights file of a saved model: a retrained or replaced model changes it, a copy does not."""
    digests = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as f:
            digests[path.name] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def write_if_changed(path: Path, content: str | bytes) -> None:
    """Write `path` only when its content changes, so a re-run of a finished pipeline leaves every file as it was."""
    data = content.encode() if isinstance(content, str) else content
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)


def write_report(config: PipelineConfig, results: dict, output_dir: Path) -> Path:
    """`report.md` and `accuracy.png`."""
    write_if_changed(output_dir / "accuracy.png", plot_accuracy(results))
    lines = ["# hf-instruct pipeline report", "", *results_section(results)]
    if row := best_of_n_row(config):
        n, temperature = config.evaluation["best_of_n"], config.evaluation.get("best_of_n_temperature", 1.0)
        ceiling = " / ".join(f"{results[row]['splits'][split]['any_sample_correct']:.3f}" for split in SUITE_SPLITS)
        lines += [
            "",
            f"{row}: the SFT model samples {n} answers to each prompt (temperature {temperature}, seed {config.seed}) "
            f'and the reward model keeps the one it scores highest, {n} samples per prompt (what "equal samples" '
            f"means: docs/evaluation.md). A reward model that always picked a right sample would reach {ceiling} "
            f"({', '.join(map(short, SUITE_SPLITS))}: the prompts with at least one right sample).",
        ]
    for name in config.baselines:
        lines += ["", headline(name, results, config.baselines[name])]
        lines += [headline(f"{name}{FEW_SHOT}", results, config.baselines[name])]
    lines += ["", "![accuracy by model and held-out split, floors as black lines](accuracy.png)", ""]
    lines += against_sft_section(results)
    lines += per_family_section(results)
    paraphrases = {name: model["splits"]["held_out_paraphrases"] for name, model in results.items()}
    lines += ["## Sample answers (held-out paraphrases)", ""]
    samples = next(iter(paraphrases.values()))["samples"]
    lines += markdown_table(
        ["prompt", *results],
        [
            [
                table_cell(sample["prompt"], 60),
                *(table_cell(split["samples"][index]["answer"], 40) for split in paraphrases.values()),
            ]
            for index, sample in enumerate(samples)
        ],
    )
    lines += ["", "## Training curves", ""]
    lines += [
        f"![{name}]({name}/training_curves.png)"
        for name in runs(config)
        if (output_dir / name / "training_curves.png").is_file()
    ]
    # each stage's time as it recorded it, so a resumed pipeline reports the real times
    run = [
        [f"{name} wall time", f"{read_history(output_dir / name)[-1]['wall_time_s'] / 60:.1f} min"]
        for name in runs(config)
    ]
    run += [
        ["seed", str(config.seed)],
        ["suite", config.suite_config().describe()],  # its seed may differ from the runs' (a development suite)
        ["hardware", hardware()],
        [
            "versions",
            f"hf-instruct {__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
            f"torch {torch.__version__}",
        ],
    ]
    lines += ["", "## Run", "", *markdown_table(["", ""], run)]
    report = output_dir / "report.md"
    write_if_changed(report, "\n".join(lines) + "\n")
    return report


def short(split: str) -> str:
    return split.removeprefix("held_out_")


def results_section(results: dict) -> list[str]:
    """The main table: each model's accuracy on every split with its 95 % interval, under the trivial-rule floor."""
    first = next(iter(results.values()))["splits"]
    header = ["model", "parameters", *(f"{short(s)} ({first[s]['examples']} rows)" for s in SUITE_SPLITS)]
    rows = [["floor (best trivial rule per family)", "", *(f"{first[s]['floor']:.3f}" for s in SUITE_SPLITS), ""]]
    for name, model in results.items():
        accuracies = [
            f"{model['splits'][s]['accuracy']:.3f} [{model['splits'][s]['interval'][0]:.3f}, "
            f"{model['splits'][s]['interval'][1]:.3f}]"
            for s in SUITE_SPLITS
        ]
        rows.append([name, f"{model['parameters'] / 1e6:.2f} M", *accuracies, f"{model['perplexity']:.3f}"])
    return [
        "## Results on held-out data",
        "",
        "Instruction accuracy on the scored rows of each split, with its 95 % Wilson interval; the floor is what "
        "answers that need no model score (each family's best trivial rule: a constant, the first or last option or "
        "list item shown, the word named, ...; docs/evaluation.md).",
        "",
        *markdown_table([*header, "pretraining perplexity"], rows),
    ]


def against_sft_section(results: dict) -> list[str]:
    """Per split, each model against the SFT model on the same prompts: the paired difference in accuracy and the
    win rates, the verifier's first."""
    lines = [
        "## Against SFT, on the same prompts",
        "",
        "Difference: the model's accuracy minus SFT's on the same rows, with its 95 % paired bootstrap interval and "
        "McNemar's exact p. Win rate: over SFT's answer, on the prompts where the two answers differ (ties half), "
        "as the suite's exact verifier judges (the labeler); the reward model's on the same pairs, and how often it "
        "prefers the verifier's choice where the verifier prefers one.",
    ]
    header = ["model", "difference [95 %]", "p", "win rate (verifier)", "pairs", "win rate (reward model)"]
    for split in (*SUITE_SPLITS, "pooled"):
        rows = []
        for name, model in results.items():
            scores = model["pooled"] if split == "pooled" else model["splits"][split]
            difference, agreement = scores["vs_sft"], scores["reward_model_agreement_vs_sft"]
            low, high = difference["interval"]
            rows.append(
                [
                    name,
                    f"{difference['difference']:+.3f} [{low:+.3f}, {high:+.3f}]",
                    f"{difference['p']:.3g}",
                    f"{scores['win_rate_vs_sft']:.3f}",
                    str(scores["pairs_vs_sft"]),
                    f"{scores['reward_model_win_rate_vs_sft']:.3f}",
                    "–" if agreement is None else f"{agreement:.2f}",
                ]
            )
        title = "all held-out splits pooled" if split == "pooled" else short(split)
        lines += ["", f"### {title}", "", *markdown_table([*header, "reward model agrees"], rows)]
    return [*lines, ""]


def per_family_section(results: dict) -> list[str]:
    """Per split, each family's rows, its floor and each model's accuracy: a family rests on few rows, so the row
    count stands beside each figure."""
    lines = []
    for split in SUITE_SPLITS:
        first = next(iter(results.values()))["splits"][split]
        rows = [
            [
                f"{family} ({count})",
                f"{first['floor_per_family'][family]['floor']:.2f} "
                f"({table_cell(first['floor_per_family'][family]['rule'], 40)})",
                *(f"{model['splits'][split]['per_family'][family]:.2f}" for model in results.values()),
            ]
            for family, count in first["family_examples"].items()
        ]
        lines += [f"## Accuracy per task family: {short(split)}", ""]
        lines += [*markdown_table(["family (rows)", "floor (rule)", *results], rows), ""]
    return lines


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
    """Put the final model's held-out accuracy into its run record and re-render its card: the pipeline's last step
    before the push, so that the published card shows it."""
    run_file = final_dir / RUN_FILE
    record = json.loads(run_file.read_text())
    record["history"][-1]["metrics"].update(
        {f"suite_accuracy/{split}": results["ppo"]["splits"][split]["accuracy"] for split in SUITE_SPLITS}
    )
    write_if_changed(run_file, json.dumps(record, indent=2) + "\n")
    write_if_changed(final_dir / "README.md", str(render_model_card(final_dir)))  # what `write_model_card` writes


def plot_accuracy(results: dict) -> bytes:
    """The accuracy bar chart as PNG bytes (compared with the file before writing it): each model's accuracy with its
    95 % interval, each split's floor a dashed line across its bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(results)
    for offset, (name, model) in enumerate(results.items()):
        values = [model["splits"][split]["accuracy"] for split in SUITE_SPLITS]
        errors = [
            [value - model["splits"][split]["interval"][0] for split, value in zip(SUITE_SPLITS, values, strict=True)],
            [model["splits"][split]["interval"][1] - value for split, value in zip(SUITE_SPLITS, values, strict=True)],
        ]
        positions = [i + offset * width for i in range(len(SUITE_SPLITS))]
        axis.bar(positions, values, width, yerr=errors, capsize=2, error_kw={"linewidth": 0.8}, label=name)
    floors = next(iter(results.values()))["splits"]
    for i, split in enumerate(SUITE_SPLITS):  # a split's floor: a line across its bars
        label = "floor (trivial rules)" if i == 0 else None
        axis.hlines(
            floors[split]["floor"], i - width / 2, i + 0.8 - width / 2, colors="black", linestyles="--", label=label
        )
    axis.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(SUITE_SPLITS))], [s.removeprefix("held_out_") for s in SUITE_SPLITS]
    )
    axis.set_ylabel("instruction accuracy")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
