"""Comparisons as InstructGPT collected them: the SFT model answers each prompt K times, a labeler ranks the answers,
and every pair of the ranking becomes a comparison (Ouyang et al. 2022, section 3.5).

The labeler is simulated (`hf_instruct.data.labeler.simulated_labeler`: the suite's verifier first, then documented
preferences, then a disagreement rate), so the prompts need the suite's `check` column. The output is
`<output_dir>/comparisons.jsonl`, one pair a line in TRL's conversational preference form, which `hf-instruct reward`
and `hf-instruct dpo` read, plus `group` (the prompt's index: all pairs of a prompt share it, and the reward stage
trains them together), `family`, `check`, and each side's rank and verifier verdict.

Collection is resumable: the answers of a prompt are sampled from seeds of its own (the run's seed, the prompt's
index, the answer's index), and the rows of each finished batch of prompts are appended with the count of prompts
done, so a run killed and started again continues after the last finished batch and writes the same file as a run
never stopped. The stage writes data, not a model: it is finished when `comparisons.jsonl` holds every prompt asked
for, beside `all_results.json` (the counts) and the run record.
"""

import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainingArguments
from transformers.utils import logging

from ..data.labeler import DEFAULT_DISAGREEMENT, Comparison, simulated_labeler
from ..data.prompts import to_prompt
from ..data.records import BadRecordError, normalize_records
from ..data.suite.verifiers import CHECKS, verify
from ..evaluation.generation import generate_answers, load_chat_model
from ..model_card import RESULTS_FILES, RUN_FILE, read_history, stage_record, write_run_record
from ..staleness import input_fingerprints, run_settings
from .arguments import StageArguments
from .lifecycle import leave_finished_run, start_run
from .stage import Stage

STAGE = "collect_comparisons"
COMPARISONS_FILE = "comparisons.jsonl"
STATE_FILE = "collection_state.json"  # prompts done and the bytes of comparisons.jsonl they wrote
logger = logging.get_logger(__name__)
Labeler = Callable[[list[str], str, random.Random, float], list[Comparison]]


@dataclass
class CollectComparisonsConfig(StageArguments, TrainingArguments):
    """Sample K answers per prompt from the SFT model and rank them with the simulated labeler into comparisons.

    Parameters:
        model_name_or_path: the SFT policy that answers (a folder or LoRA adapter with a chat template).
        train_files: prompt files: rows with a `prompt` (chat messages without the answer) or `messages` (its last
            assistant turn is dropped), and the `check` the labeler reads (the suite's JSON verifier spec).
        num_samples, temperature, max_new_tokens, generation_batch_size, max_prompts: the sampling.
        labeler_disagreement: how often a pairwise judgement is flipped.
    The other fields are `TrainingArguments`' (seed, output_dir, disable_tqdm); none of its training fields is used.
    """

    num_samples: int = field(
        default=4, metadata={"help": "K: answers sampled per prompt, every pair of them compared (InstructGPT: 4–9)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (InstructGPT: 1)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest answer, in tokens."})
    generation_batch_size: int = field(
        default=16, metadata={"help": "Prompts answered at once (each num_samples times); the unit of resumption."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "At most this many prompts (default: all)."})
    labeler_disagreement: float = field(
        default=DEFAULT_DISAGREEMENT,
        metadata={
            "help": "Probability that a pairwise judgement is flipped (default: InstructGPT's 72.6 % agreement "
            "between labelers; see hf_instruct.data.labeler)."
        },
    )
    on_bad_record: str = field(default="error", metadata={"help": "'error' or 'skip' (skipped records are counted)."})

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ValueError("Set --model_name_or_path: the SFT model whose answers the labeler compares.")
        for name, least in (("num_samples", 2), ("max_new_tokens", 1), ("generation_batch_size", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"--{name} must be at least {least}, got {getattr(self, name)}.")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be above 0 (the answers are sampled), got {self.temperature}.")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"--max_prompts must be at least 1 (or unset: every prompt), got {self.max_prompts}.")
        if not 0 <= self.labeler_disagreement <= 0.5:
            raise ValueError(
                f"--labeler_disagreement must be between 0 and 0.5 (above 0.5 the labeler prefers the worse answer "
                f"more often than not), got {self.labeler_disagreement}."
            )
        if self.push_to_hub:
            raise ValueError(
                f"--push_to_hub: {STAGE} writes a data file, not a model; upload {COMPARISONS_FILE} as a dataset "
                "(`hf upload <namespace/name> <output_dir> --repo-type dataset`)."
            )
        super().__post_init__()


def to_labelled_prompt(record: dict) -> dict:
    """A prompt (see `hf_instruct.data.prompts.to_prompt`) with the `check` the labeler ranks its answers by."""
    prompt = to_prompt(record)["prompt"]
    check = record.get("check")
    if check is None:
        raise BadRecordError(
            "field 'check' is missing: the simulated labeler ranks answers by it (the suite's JSON verifier spec, "
            "e.g. its comparisons split); with other prompts, pass a labeler of your own"
        )
    try:
        spec = json.loads(check) if isinstance(check, str) else check
    except json.JSONDecodeError as error:
        raise BadRecordError(f"field 'check' is not valid JSON ({error.msg})") from None
    if not isinstance(spec, dict) or spec.get("kind") not in CHECKS:
        raise BadRecordError(f"field 'check' must be a check object whose kind is one of {sorted(CHECKS)}")
    return {"prompt": prompt, "check": json.dumps(spec), "family": record.get("family")}


def answer_seed(seed: int, prompt: int, sample: int) -> int:
    """The seed of one answer: a hash of the run's seed, the prompt's index and the answer's index."""
    digest = hashlib.sha256(f"{seed}/{prompt}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def comparison_row(prompt: dict, group: int, comparison: Comparison) -> dict:
    """One line of comparisons.jsonl: the pair in TRL's conversational form, then what a reader wants to know."""
    chosen, rejected = comparison.chosen, comparison.rejected
    return {
        "prompt": prompt["prompt"],
        "chosen": [{"role": "assistant", "content": chosen.text}],
        "rejected": [{"role": "assistant", "content": rejected.text}],
        "group": group,
        "family": prompt["family"],
        "check": prompt["check"],
        "chosen_rank": chosen.rank,
        "rejected_rank": rejected.rank,
        "chosen_passes": chosen.passes,
        "rejected_passes": rejected.passes,
        "flipped": comparison.flipped,
    }


def read_state(output_dir: Path) -> dict:
    """What the run in `output_dir` has done so far: prompts done, the bytes of comparisons.jsonl they wrote, and
    counts of answers and pairs (all zero for a new run, or one whose comparisons.jsonl lost rows since)."""
    path, comparisons = output_dir / STATE_FILE, output_dir / COMPARISONS_FILE
    if path.is_file():
        state = json.loads(path.read_text())
        if comparisons.is_file() and comparisons.stat().st_size >= state["bytes"]:
            return state
        logger.warning(f"{comparisons} lacks rows that {path} counts as written: collecting from the first prompt.")
    counts = ("prompts_done", "bytes", "answers", "passing_answers", "empty_answers", "distinct_answers")
    counts += ("comparisons", "flipped")
    return dict.fromkeys(counts, 0)


def write_state(output_dir: Path, state: dict) -> None:
    """Replace the state file in one step, so a kill leaves the old one or the new one."""
    temporary = output_dir / f"{STATE_FILE}.tmp"
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(temporary, output_dir / STATE_FILE)


def collection_problem(output_dir: str | os.PathLike) -> str | None:
    """Why `output_dir` holds no finished collection (None: it does, for the prompts its state names)."""
    output_dir = Path(output_dir)
    for name in (COMPARISONS_FILE, STATE_FILE, RESULTS_FILES[0], RUN_FILE):
        if not (output_dir / name).is_file():
            return f"{name} is missing"
    state = read_state(output_dir)
    if state["prompts_done"] < state.get("prompts_total", 0) or not read_history(str(output_dir)):
        return f"{state['prompts_done']} of {state.get('prompts_total')} prompts collected"
    return None


def is_collected(config: CollectComparisonsConfig, output_dir: Path) -> bool:
    """Whether `output_dir` holds a finished collection of as many prompts as `config` asks for."""
    return collection_problem(output_dir) is None and read_state(output_dir).get("max_prompts") == config.max_prompts


def run_collect_comparisons(config: CollectComparisonsConfig, labeler: Labeler = simulated_labeler) -> str:
    """Sample, rank and write the comparisons to `config.output_dir`; `labeler(answers, check, rng, disagreement)`
    turns one prompt's answers into comparisons (see `hf_instruct.data.labeler`)."""
    # ---- seed, refuse a foreign run in output_dir, leave a finished one
    started = time.time()
    if config.world_size > 1:
        raise ValueError(f"{STAGE} runs in one process: start it without torchrun or accelerate launch.")
    start = start_run(config, STAGE, finished=is_collected, more="raise --max_prompts to collect more")
    if start.finished:
        return leave_finished_run(config, STAGE)
    output_dir = Path(config.output_dir)

    # ---- the prompts, with their checks; what was done before
    with config.main_process_first(desc="normalising prompts"):
        prompts = normalize_records(
            config.data_source, to_labelled_prompt, config.on_bad_record, config.dataset_split, "Normalising prompts"
        )
    prompts = prompts.select(range(min(len(prompts), config.max_prompts or len(prompts)))).to_list()
    state = read_state(output_dir)
    state.update(prompts_total=len(prompts), max_prompts=config.max_prompts)
    comparisons_file = output_dir / COMPARISONS_FILE
    with comparisons_file.open("ab") as f:  # a kill may have left rows of an unfinished batch: they are dropped
        f.truncate(state["bytes"])

    # ---- sample K answers per prompt, a batch of prompts at a time; rank; append the batch's pairs
    model, tokenizer = load_chat_model(config.model_name_or_path)
    progress = tqdm(
        total=len(prompts),
        initial=state["prompts_done"],
        desc="collecting comparisons",
        unit="prompt",
        disable=config.disable_tqdm,
    )
    k = config.num_samples
    with comparisons_file.open("ab") as f:
        for first in range(state["prompts_done"], len(prompts), config.generation_batch_size):
            batch = prompts[first : first + config.generation_batch_size]
            groups = range(first, first + len(batch))
            answers = generate_answers(
                model,
                tokenizer,
                [prompt["prompt"] for prompt in batch],
                max_new_tokens=config.max_new_tokens,
                batch_size=len(batch),
                num_return_sequences=k,
                do_sample=True,
                temperature=config.temperature,
                show_progress=False,
                seeds=[answer_seed(config.seed, group, sample) for group in groups for sample in range(k)],
            )
            lines = []
            for group, prompt, texts in zip(groups, batch, answers, strict=True):
                rng = random.Random(f"{config.seed}/{group}")
                comparisons = labeler(texts, prompt["check"], rng, config.labeler_disagreement)
                lines += [json.dumps(comparison_row(prompt, group, c), ensure_ascii=False) + "\n" for c in comparisons]
                state["answers"] += len(texts)
                state["passing_answers"] += sum(verify(prompt["check"], text) for text in texts)
                state["distinct_answers"] += len({text.strip() for text in texts} - {""})
                state["empty_answers"] += sum(not text.strip() for text in texts)
                state["comparisons"] += len(comparisons)
                state["flipped"] += sum(c.flipped for c in comparisons)
            data = "".join(lines).encode()
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            state["prompts_done"] += len(batch)
            state["bytes"] += len(data)
            write_state(output_dir, state)
            progress.update(len(batch))
    progress.close()

    # ---- the counts, the run record
    metrics = collection_metrics(state)
    (output_dir / RESULTS_FILES[0]).write_text(json.dumps(metrics, indent=2) + "\n")
    record = stage_record(
        stage=STAGE,
        model=model,
        base_model=config.model_name_or_path,
        data=config.data_source,
        steps=state["prompts_done"],
        wall_time_s=time.time() - started,
        hyperparameters={
            **{name: getattr(config, name) for name in COLLECT_COMPARISONS.card_hyperparameters},
            "labeler": f"{labeler.__module__}.{labeler.__qualname__}",
        },
        metrics={name: metrics[name] for name in COLLECT_COMPARISONS.card_metrics},
    )
    record.update(settings=run_settings(config), inputs=input_fingerprints(config))
    write_run_record(output_dir, [record])
    return config.output_dir


def collection_metrics(state: dict) -> dict:
    """What the collection made: prompts, pairs, distinct non-empty answers, the shares of sampled answers that pass
    their check and that are empty (left out of the pairs), the share of flipped judgements."""
    return {
        "prompts": state["prompts_done"],
        "comparisons": state["comparisons"],
        "comparisons_per_prompt": state["comparisons"] / max(state["prompts_done"], 1),
        "distinct_answers_per_prompt": state["distinct_answers"] / max(state["prompts_done"], 1),
        "answers_passing": state["passing_answers"] / max(state["answers"], 1),
        "answers_empty": state["empty_answers"] / max(state["answers"], 1),
        "flipped": state["flipped"] / max(state["comparisons"], 1),
    }


# It writes data, not a model: no model card and no training curves; its run record holds these counts and settings
COLLECT_COMPARISONS = Stage(
    name=STAGE,
    config_class=CollectComparisonsConfig,
    run=run_collect_comparisons,
    card_metrics=(
        "prompts",
        "comparisons",
        "comparisons_per_prompt",
        "distinct_answers_per_prompt",
        "answers_passing",
        "answers_empty",
        "flipped",
    ),
    card_hyperparameters=(
        "num_samples",
        "temperature",
        "max_new_tokens",
        "max_prompts",
        "labeler_disagreement",
        "seed",
    ),
    plotted=(),
)
