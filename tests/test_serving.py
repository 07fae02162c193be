"""`hf-instruct serve` through the real `openai` client: it gets `hf-instruct generate`'s greedy answer, streamed or
not; a request the server cannot answer is refused at once (400, OpenAI's error body naming the field), one that runs
past the request timeout ends with a 504 and frees the server, `/v1/models` lists the model, and SIGTERM stops the
server within seconds even with a generation in flight."""

import contextlib
import functools
import signal
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
# The greedy answer of these random weights never stops (checked for 3000 tokens): a long context makes a request
# that runs for tens of seconds, past TIMEOUT, and one still in flight when SIGTERM comes.
CONTEXT = 4096
TIMEOUT = 4  # the shared server's --request_timeout, in seconds
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny chat model as `hf-instruct sft` saves one: it stops at the end of the assistant turn."""
    torch.manual_seed(1)  # this seed's random weights answer with a dozen tokens rather than stopping at once
    model = InstructGPTForCausalLM(tiny_config(max_position_embeddings=CONTEXT))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn_token_id(tokenizer)]
    path = tmp_path_factory.mktemp("serving") / "chat"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def client(chat_model_dir) -> openai.OpenAI:
    """An openai client of one server for the whole module (no retries: a failure shows at once)."""
    with serving(chat_model_dir, chat_model_dir.parent / "server.log", "--request_timeout", str(TIMEOUT)) as running:
        port, server, log = running
        wait_until_up(port, server, log)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def chat(client, chat_model_dir):
    """`client.chat.completions.create` for the served model, by default with HELLO."""
    return asking(client, chat_model_dir)


def asking(client: openai.OpenAI, model_dir: Path):
    return functools.partial(client.chat.completions.create, model=str(model_dir), messages=HELLO)


def test_the_openai_client_gets_the_greedy_answer_from_hf_instruct_serve(chat_model_dir, chat, capsys):
    expected = []
    for prompt in PROMPTS:
        assert main(["generate", str(chat_model_dir), "--prompt", prompt, "--max_new_tokens", str(MAX_TOKENS)]) == 0
        expected.append(capsys.readouterr().out.strip())
    assert min(len(answer) for answer in expected) > 5  # answers worth comparing, not a lone stop token

    for prompt, answer in zip(PROMPTS, expected, strict=True):
        request = dict(messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0)
        completion = chat(**request)
        assert completion.choices[0].message.content.strip() == answer
        assert (completion.choices[0].finish_reason, completion.usage.completion_tokens) == ("length", MAX_TOKENS)
        stream = chat(**request, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices).strip() == answer
        assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "length"
        assert chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == {
            "prompt_tokens": completion.usage.prompt_tokens,
            "completion_tokens": MAX_TOKENS,
        }


def test_max_tokens_past_the_context_is_refused_and_the_next_request_answers_at_once(chat):
    prompt_tokens = chat(max_tokens=1).usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as refused:
        chat(max_tokens=10**9, timeout=10)  # before: generated for ever, and every later request waited
    assert (refused.value.param, refused.value.code) == ("max_tokens", "context_length_exceeded")
    assert refused.value.body["message"] == (
        f"max_tokens is 1000000000, but this model's context is {CONTEXT} tokens and the messages take "
        f"{prompt_tokens}: ask for at most {CONTEXT - prompt_tokens}."
    )
    start = time.monotonic()
    assert chat(max_tokens=MAX_TOKENS, timeout=10).usage.completion_tokens == MAX_TOKENS
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "request_fields, param, message",
    [
        (
            dict(messages=[]),
            "messages",
            "messages must be a list of {role, content} objects, e.g. [{'role': 'user', 'content': 'Hello'}], got [].",
        ),
        (
            dict(messages=openai.omit),
            "messages",
            "messages is missing: give the conversation as a list of {role, content} objects, e.g. "
            "[{'role': 'user', 'content': 'Hello'}].",
        ),
        (dict(max_tokens=0), "max_tokens", "max_tokens must be a whole number of at least 1, got 0."),
        (dict(max_tokens=-1), "max_tokens", "max_tokens must be a whole number of at least 1, got -1."),
        (
            dict(messages=[{"role": "robot", "content": "Hi"}]),
            "messages[0].role",
            "messages[0].role must be one of system, developer, user, assistant, got 'robot'.",
        ),
        (dict(temperature=3), "temperature", "temperature must be a number from 0 to 2, got 3."),
        (dict(stop=["."]), "stop", "stop is not supported by hf-instruct serve; leave it out."),
    ],
    ids=["empty messages", "no messages", "max_tokens 0", "max_tokens -1", "role", "temperature", "stop"],
)
def test_a_bad_request_gets_a_400_that_names_the_field(chat, request_fields, param, message):
    with pytest.raises(openai.BadRequestError) as refused:  # before: a bare 500
        chat(**request_fields)
    assert refused.value.status_code == 400
    assert refused.value.body == {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    assert chat(max_tokens=1).usage.completion_tokens == 1  # before: this request lost its connection


def test_another_model_is_not_found_and_a_seed_makes_a_sampled_answer_repeatable(chat):
    with pytest.raises(openai.NotFoundError) as not_served:
        chat(model="gpt-4o")
    assert (not_served.value.param, not_served.value.code) == ("model", "model_not_found")

    def sampled(seed: int) -> str:
        return chat(max_tokens=MAX_TOKENS, temperature=1.5, seed=seed).choices[0].message.content

    assert sampled(seed=1) == sampled(seed=1) != sampled(seed=2)
    text_parts = [{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]}]
    greedy = chat(max_tokens=MAX_TOKENS, temperature=0).choices[0].message.content
    assert chat(messages=text_parts, max_tokens=MAX_TOKENS, temperature=0).choices[0].message.content == greedy


def test_a_prompt_longer_than_the_context_is_refused_at_once(chat):
    start = time.monotonic()
    with pytest.raises(openai.BadRequestError) as refused:  # before: 62 s of generation
        chat(messages=[{"role": "user", "content": "hello " * 16_667}])  # 100 000 characters
    assert time.monotonic() - start < 5
    assert (refused.value.param, refused.value.code) == ("messages", "context_length_exceeded")
    assert refused.value.body["message"].endswith(
        f"tokens, but this model's context is {CONTEXT} tokens (max_position_embeddings): shorten them."
    )


def test_v1_models_lists_the_served_model(client, chat_model_dir):
    models = client.models.list().data  # before: a 500
    assert [(model.id, model.owned_by, model.context_length) for model in models] == [
        (str(chat_model_dir), "hf-instruct", CONTEXT)
    ]


def test_a_request_past_the_timeout_ends_with_a_504_and_frees_the_server(chat):
    longest = CONTEXT - chat(max_tokens=1).usage.prompt_tokens  # thousands of tokens: tens of seconds
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError) as timed_out:
        chat(max_tokens=longest)
    assert TIMEOUT <= time.monotonic() - start < TIMEOUT + 5
    assert (timed_out.value.status_code, timed_out.value.code) == (504, "timeout")
    assert f"longer than the server's request timeout of {TIMEOUT} s" in timed_out.value.message

    start = time.monotonic()
    with pytest.raises(openai.APIError, match=f"request timeout of {TIMEOUT} s"):
        list(chat(max_tokens=longest, stream=True))  # the stream ends with an error event
    assert time.monotonic() - start < TIMEOUT + 5

    start = time.monotonic()
    assert chat(max_tokens=MAX_TOKENS).usage.completion_tokens == MAX_TOKENS
    assert time.monotonic() - start < 2


def test_sigterm_stops_the_server_within_seconds_with_a_request_in_flight(chat_model_dir, tmp_path):
    with serving(chat_model_dir, tmp_path / "server.log") as (port, server, log):
        wait_until_up(port, server, log)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        stream = iter(asking(client, chat_model_dir)(max_tokens=CONTEXT // 2, temperature=0, stream=True))
        assert next(stream).choices[0].delta.role == "assistant"
        assert next(stream).choices[0].delta.content  # generating: thousands of tokens to go
        server.send_signal(signal.SIGTERM)
        start = time.monotonic()
        with pytest.raises(openai.APIError, match=r"The server is shutting down; this request was stopped after"):
            list(stream)  # before: the stream ran to its end, and the server waited for it
        assert time.monotonic() - start < 5
        # The server stops in a fraction of a second; unloading torch and transformers takes seconds on a busy CPU.
        assert server.wait(timeout=30) == 0  # before: death by SIGTERM (-15), once the stream had ended
        assert "Finished server process" in log.read_text()


@contextlib.contextmanager
def serving(model_dir: Path, log: Path, *options: str):
    """`hf-instruct serve <model_dir> *options` in a subprocess on a free port: yields (port, process, log)."""
    port = free_port()
    command = [sys.executable, "-m", "hf_instruct.cli", "serve", str(model_dir), "--host", "127.0.0.1"]
    with log.open("w") as output:
        server = subprocess.Popen(
            [*command, "--port", str(port), *options], env=CLI_ENV, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        yield port, server, log
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()  # no server left behind, generating for ever
            raise


def wait_until_up(port: int, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            return
        except OSError:  # not listening yet
            time.sleep(0.5)
    raise AssertionError(f"no answer from the server after {timeout} s:\n{log.read_text()[-3000:]}")
