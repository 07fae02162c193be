"""`hf-instruct serve` is transformers' own OpenAI-compatible server: the `openai` client chats with a saved model
and gets `hf-instruct generate`'s greedy answer, streamed or not, with and without continuous batching."""

import contextlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import CLI_ENV, free_port, tiny_config

from hf_instruct import InstructGPTForCausalLM
from hf_instruct.cli import main
from hf_instruct.tokenization import end_of_turn_token_id

openai = pytest.importorskip("openai", reason="the optional [serving] extra is not installed")

PROMPTS = ["Say hello.", "The quick brown fox"]
MAX_TOKENS = 12
# A small paged KV cache: by default it is sized from free memory, which takes tens of seconds on a CPU.
SMALL_CACHE = ["--cb-num-blocks", "16", "--cb-block-size", "32", "--cb-max-batch-tokens", "256"]


@pytest.fixture
def chat_model_dir(tmp_path, tokenizer) -> Path:
    """A tiny chat model as `hf-instruct sft` saves one: it stops at the end of the assistant turn."""
    torch.manual_seed(1)  # this seed's random weights answer with a dozen tokens rather than stopping at once
    model = InstructGPTForCausalLM(tiny_config())
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn_token_id(tokenizer)]
    model.save_pretrained(tmp_path / "chat")
    tokenizer.save_pretrained(tmp_path / "chat")
    return tmp_path / "chat"


@pytest.mark.slow  # two servers start side by side (about 15 s)
def test_the_openai_client_gets_the_greedy_answer_from_hf_instruct_serve(chat_model_dir, tmp_path, capsys):
    expected = []
    for prompt in PROMPTS:
        assert main(["generate", str(chat_model_dir), "--prompt", prompt, "--max_new_tokens", str(MAX_TOKENS)]) == 0
        expected.append(capsys.readouterr().out.strip())
    assert min(len(answer) for answer in expected) > 5  # answers worth comparing, not a lone stop token

    with contextlib.ExitStack() as stack:
        servers = {  # the server logs which generation path served a request: "CB: False" or "CB: True"
            "CB: False": stack.enter_context(serving(chat_model_dir, tmp_path / "sequential.log")),
            "CB: True": stack.enter_context(
                serving(chat_model_dir, tmp_path / "continuous.log", "--continuous-batching", *SMALL_CACHE)
            ),
        }
        for path_taken, (port, server, log) in servers.items():
            wait_until_up(port, server, log)
            client = openai.OpenAI(base_url=f"http://localhost:{port}/v1", api_key="unused", max_retries=0)
            for prompt, answer in zip(PROMPTS, expected, strict=True):
                request = dict(
                    model=str(chat_model_dir),
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=MAX_TOKENS,
                    temperature=0,
                )
                completion = client.chat.completions.create(**request)
                assert completion.choices[0].message.content.strip() == answer, path_taken
                stream = client.chat.completions.create(**request, stream=True)
                streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
                assert streamed.strip() == answer, path_taken
            assert path_taken in log.read_text()


@contextlib.contextmanager
def serving(model_dir: Path, log: Path, *options: str):
    """`hf-instruct serve <model_dir> *options` in a subprocess on a free port: yields (port, process, log)."""
    port = free_port()
    command = [sys.executable, "-m", "hf_instruct.cli", "serve", str(model_dir), "--port", str(port), *options]
    env = {**CLI_ENV, "HF_HOME": str(log.parent / "hf_home")}
    with log.open("w") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield port, server, log
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_until_up(port: int, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(f"http://localhost:{port}/health", timeout=5)
            return
        except OSError:  # not listening yet
            time.sleep(0.5)
    raise AssertionError(f"no answer from the server after {timeout} s:\n{log.read_text()[-3000:]}")
