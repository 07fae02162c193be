"""lm-evaluation-harness, the evaluation users already run, scores a saved checkpoint through its remote code alone:
its `hf` model with `trust_remote_code=True`, on a local task (a YAML file and a JSONL file), without hf_instruct."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_config

from hf_instruct import InstructGPTForCausalLM

pytest.importorskip("lm_eval", reason="the optional [eval] extra is not installed")

# A multiple-choice task as a user writes one: the YAML names a local JSONL file.
TASK = """\
task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
DOCS = [
    {"question": "The quick brown fox jumps over the", "choices": ["lazy dog.", "reward model."], "label": 0},
    {"question": "A model learns only what the", "choices": ["labels say.", "fox says.", "policy."], "label": 0},
    {"question": "PPO makes the policy prefer", "choices": ["them too.", "the lazy dog."], "label": 1},
]
# The harness in a process where `import hf_instruct` fails, so the model can only come from the checkpoint's remote
# code. Its Python API builds the same `hf` model as `lm_eval run --model hf --model_args ...`; unlike the command
# line it can skip indexing the harness's built-in tasks, which takes 10-30 s.
LM_EVAL_WITHOUT_THE_PLUGIN = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_instruct"] = None
    import lm_eval
    from lm_eval.tasks import TaskManager
    model, tasks, output = sys.argv[1:]
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model},trust_remote_code=True", tasks=["tiny_choice"], device="cpu",
        task_manager=TaskManager(include_path=tasks, include_defaults=False), log_samples=True,
    )
    samples = sorted(results["samples"]["tiny_choice"], key=lambda sample: sample["doc_id"])
    log_likelihoods = [[float(value) for value, _ in sample["filtered_resps"]] for sample in samples]
    accuracy = results["results"]["tiny_choice"]["acc,none"]
    open(output, "w").write(json.dumps({"accuracy": accuracy, "log_likelihoods": log_likelihoods}))
    """
)


@torch.no_grad()
def log_likelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context), split into tokens the way the harness does (the pair, then the context)."""
    whole = tokenizer(context + continuation).input_ids
    start = len(tokenizer(context).input_ids)
    log_probs = model(torch.tensor([whole])).logits[0, :-1].log_softmax(-1)
    return sum(log_probs[position - 1, whole[position]].item() for position in range(start, len(whole)))


@pytest.mark.slow  # the harness takes 10-20 s to start
def test_lm_eval_scores_a_saved_checkpoint_without_the_plugin(tmp_path, tokenizer):
    model = InstructGPTForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    (tasks / "tiny_choice.yaml").write_text(TASK.format(data=tasks / "tiny_choice.jsonl"))

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LM_EVAL_WITHOUT_THE_PLUGIN, str(tmp_path / "model"), str(tasks), str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The harness's log-likelihood of every choice is our model's, so its accuracy is too.
    scored = json.loads((tmp_path / "out").read_text())
    expected = [[log_likelihood(model, tokenizer, doc["question"], " " + c) for c in doc["choices"]] for doc in DOCS]
    assert sum(scored["log_likelihoods"], []) == pytest.approx(sum(expected, []), abs=1e-4)
    right = [scores.index(max(scores)) == doc["label"] for doc, scores in zip(DOCS, expected, strict=True)]
    assert scored["accuracy"] == pytest.approx(sum(right) / len(DOCS))
