"""`hf-instruct serve`: an OpenAI-compatible chat server (`/v1/chat/completions`, streamed or not, `/v1/models`,
`/health`) for a saved model, on Starlette and uvicorn.

This command used to start `transformers serve`, which checks little and cannot stop a generation: `max_tokens` 1e9
generated for ever and blocked every later request and SIGTERM, empty `messages` or `max_tokens` <= 0 gave a bare 500
(and broke the client's next request), a prompt far past the context ran for a minute, and `/v1/models` failed. Here
every request is checked against the model's context before it queues (400, OpenAI's error body, naming the field);
one generation thread answers the requests in turn, and a stopping criterion read after every token ends a generation
at its deadline (`--request_timeout`), when its client hangs up, or on SIGTERM/Ctrl-C, so the server exits within a
second or so.
"""

import argparse
import asyncio
import importlib.util
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jinja2 import TemplateError
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from .evaluation import load_chat_model
from .evaluation.generation import stop_token_ids

if TYPE_CHECKING:  # the [serving] extra: imported where the server starts
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse

DEFAULT_REQUEST_TIMEOUT = 120.0
# Seconds uvicorn waits for open requests after SIGTERM before it cancels them: ours stop within one token.
SHUTDOWN_GRACE = 5.0
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# OpenAI fields that would change the answer and that this server does not implement: refused rather than ignored.
UNSUPPORTED_FIELDS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logprobs",
    "top_logprobs",
    "stop",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "audio",
    "modalities",
    "prediction",
)


class RequestError(Exception):
    """A request the server does not answer: its HTTP status and OpenAI's error body (message, type, param, code)."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.error = {"message": message, "type": kind, "param": param, "code": code}


@dataclass
class Job:
    """One checked chat request, waiting for or running on the generation thread."""

    input_ids: list[int]
    max_new_tokens: int
    sampling: dict[str, Any]
    seed: int | None
    stream: bool
    include_usage: bool
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")


class StopWhen(StoppingCriteria):
    """Ends a generation after the current token once `stop()` says so (deadline, client gone, server stopping)."""

    def __init__(self, stop: Callable[[], bool]):
        self.stop = stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.stop(), dtype=torch.bool, device=input_ids.device)


class ChatServer:
    """The served model behind one generation thread, and the ASGI app that answers for it."""

    def __init__(
        self,
        model_id: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ):
        self.model_id, self.model, self.tokenizer = model_id, model, tokenizer
        self.request_timeout = request_timeout
        context_length = getattr(model.config, "max_position_embeddings", None)
        if not context_length:
            raise ValueError(f"{model_id}: its config has no max_position_embeddings, which bounds every request.")
        self.context_length: int = context_length
        self.stops = stop_token_ids(model, tokenizer)
        self.created = int(time.time())
        self.stopping = threading.Event()  # set on SIGTERM/Ctrl-C: every generation ends at its next token
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-instruct-generate")

    def stop(self) -> None:
        """End the running generation at its next token and every queued one before it starts."""
        self.stopping.set()

    def app(self) -> "Starlette":
        """The Starlette app: the three routes, and OpenAI-style JSON errors for everything refused."""
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        def refusal(request, error: RequestError) -> JSONResponse:
            # The same request would fail again (a 503 or 504 too): the openai client must not retry it.
            return JSONResponse({"error": error.error}, status_code=error.status, headers={"x-should-retry": "false"})

        def http_error(request, error: HTTPException) -> JSONResponse:  # unknown path, wrong method
            message = f"{request.method} {request.url.path}: {error.detail}"
            return refusal(request, RequestError(message, status=error.status_code))

        def failure(request, error: Exception) -> JSONResponse:  # a bug or e.g. out of memory: logged by uvicorn
            message = f"The server failed on this request: {type(error).__name__}: {error}"
            return JSONResponse({"error": RequestError(message, status=500, kind="server_error").error}, 500)

        routes = [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ]
        return Starlette(
            routes=routes, exception_handlers={RequestError: refusal, HTTPException: http_error, Exception: failure}
        )

    async def health(self, request: "Request") -> "JSONResponse":
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok"})

    async def models(self, request: "Request") -> "JSONResponse":
        from starlette.responses import JSONResponse

        entry = {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "hf-instruct"}
        return JSONResponse({"object": "list", "data": [{**entry, "context_length": self.context_length}]})

    async def chat_completions(self, request: "Request") -> "JSONResponse | StreamingResponse":
        from starlette.responses import JSONResponse, StreamingResponse

        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError(f"The request body is not JSON: {error}.") from None
        job = self.check(body)
        if job.stream:
            return StreamingResponse(self.stream(job), media_type="text/event-stream")
        generated = await asyncio.get_running_loop().run_in_executor(self.worker, self.generate, job, None)
        finish_reason = self.finish_reason(job, generated)
        message = {"role": "assistant", "content": self.tokenizer.decode(generated, skip_special_tokens=True)}
        answer = {
            **self.header(job, "chat.completion"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": self.usage(job, generated),
        }
        return JSONResponse(answer)

    # ----- checking a request -----

    def check(self, body: Any) -> Job:
        """The request as a job for the generation thread, or a RequestError naming the first field that is wrong."""
        if not isinstance(body, dict):
            raise RequestError(f"The request body must be a JSON object, got {type(body).__name__}.")
        if body.get("model") not in (None, self.model_id):
            raise RequestError(
                f"The model {body['model']!r} is not served here; this server serves {self.model_id!r} "
                "(GET /v1/models).",
                "model",
                status=404,
                code="model_not_found",
            )
        for name in UNSUPPORTED_FIELDS:
            if body.get(name) not in (None, False, 0, "", []):
                raise RequestError(f"{name} is not supported by hf-instruct serve; leave it out.", name)
        if body.get("n") not in (None, 1):
            raise RequestError(f"n must be 1: hf-instruct serve answers once per request (got {body['n']!r}).", "n")
        try:
            prompt = self.tokenizer.apply_chat_template(conversation(body), add_generation_prompt=True, tokenize=False)
        except TemplateError as error:  # e.g. a template that wants user and assistant turns to alternate
            raise RequestError(f"The model's chat template refuses these messages: {error}", "messages") from None
        # verbose=False: no "longer than the specified maximum sequence length" warning for a prompt refused below
        input_ids = self.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        room = self.context_length - len(input_ids)
        if room < 1:
            raise RequestError(
                f"The messages take {len(input_ids)} tokens, but this model's context is {self.context_length} "
                "tokens (max_position_embeddings): shorten them.",
                "messages",
                code="context_length_exceeded",
            )
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_new_tokens = whole_number(body, name, minimum=1, default=room)
        if max_new_tokens > room:
            raise RequestError(
                f"{name} is {max_new_tokens}, but this model's context is {self.context_length} tokens and the "
                f"messages take {len(input_ids)}: ask for at most {room}.",
                name,
                code="context_length_exceeded",
            )
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(f"stream must be true or false, got {stream!r}.", "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise RequestError(f"stream_options must be an object, got {options!r}.", "stream_options")
        return Job(
            input_ids=input_ids,
            max_new_tokens=max_new_tokens,
            sampling=self.sampling(body),
            seed=whole_number(body, "seed", minimum=0, default=None),
            stream=stream,
            include_usage=bool(options.get("include_usage")),
            deadline=time.monotonic() + self.request_timeout,
        )

    def sampling(self, body: dict) -> dict[str, Any]:
        """`generate`'s sampling arguments: greedy at temperature 0, and by default unless the model's generation
        config samples; otherwise temperature and top_p as OpenAI defines them (no top-k), the generation config's
        where the request leaves them out."""
        temperature = number(body, "temperature", 0.0, 2.0)
        top_p = number(body, "top_p", 0.0, 1.0)
        if top_p == 0.0:
            raise RequestError("top_p must be above 0 (1 keeps every token).", "top_p")
        configured = self.model.generation_config
        do_sample = temperature > 0 if temperature is not None else bool(configured.do_sample)
        if not do_sample:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        temperature = temperature if temperature is not None else configured.temperature or 1.0
        top_p = top_p or configured.top_p or 1.0
        return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}

    # ----- generating -----

    def should_stop(self, job: Job) -> bool:
        return self.stopping.is_set() or job.cancelled.is_set() or time.monotonic() > job.deadline

    @torch.no_grad()
    def generate(self, job: Job, streamer=None) -> list[int]:
        """On the generation thread: the new tokens, up to the first stop token or until `should_stop`."""
        try:
            if self.should_stop(job):  # timed out or stopped while it queued
                if streamer is not None:
                    streamer.end()
                return []
            if job.seed is not None:
                torch.manual_seed(job.seed)
            input_ids = torch.tensor([job.input_ids], device=self.model.device)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=job.max_new_tokens,
                eos_token_id=self.stops,
                pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([StopWhen(lambda: self.should_stop(job))]),
                streamer=streamer,
                **job.sampling,
            )
        except BaseException:
            if streamer is not None:
                streamer.end()  # the stream's reader must not wait for ever
            raise
        return output[0, len(job.input_ids) :].tolist()

    def finish_reason(self, job: Job, generated: list[int]) -> str:
        """OpenAI's `stop` or `length`; a RequestError when the generation was cut short."""
        if generated and generated[-1] in self.stops:
            return "stop"
        if len(generated) >= job.max_new_tokens:
            return "length"
        if self.stopping.is_set():
            raise RequestError(
                f"The server is shutting down; this request was stopped after {len(generated)} tokens.",
                status=503,
                kind="server_error",
                code="shutting_down",
            )
        raise RequestError(
            f"The answer took longer than the server's request timeout of {self.request_timeout:g} s "
            f"({len(generated)} tokens by then): ask for fewer max_tokens, or start the server with a larger "
            "--request_timeout.",
            status=504,
            kind="server_error",
            code="timeout",
        )

    async def stream(self, job: Job) -> AsyncIterator[str]:
        """Server-sent events as OpenAI sends them: a role chunk, text chunks, a finish chunk, `[DONE]`; an error
        event when the answer is cut short. A client that hangs up stops the generation."""
        from transformers import AsyncTextIteratorStreamer

        streamer = AsyncTextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        generating = asyncio.get_running_loop().run_in_executor(self.worker, self.generate, job, streamer)
        try:
            yield self.chunk(job, {"role": "assistant", "content": ""})
            async for text in streamer:
                if text:
                    yield self.chunk(job, {"content": text})
            try:
                generated = await generating
                finish_reason = self.finish_reason(job, generated)
            except RequestError as error:
                yield event({"error": error.error})
                return
            yield self.chunk(job, {}, finish_reason)
            if job.include_usage:
                yield event(
                    {**self.header(job, "chat.completion.chunk"), "choices": [], "usage": self.usage(job, generated)}
                )
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # a no-op after the end; otherwise the client hung up: stop generating for it

    def header(self, job: Job, kind: str) -> dict[str, Any]:
        return {"id": job.id, "object": kind, "created": int(time.time()), "model": self.model_id}

    def chunk(self, job: Job, delta: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return event({**self.header(job, "chat.completion.chunk"), "choices": [choice]})

    @staticmethod
    def usage(job: Job, generated: list[int]) -> dict[str, int]:
        prompt, completion = len(job.input_ids), len(generated)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def conversation(body: dict) -> list[dict[str, str]]:
    """`messages` as the chat template reads them (role, text content), or a RequestError naming the bad entry."""
    messages = body.get("messages")
    shape = "a list of {role, content} objects, e.g. [{'role': 'user', 'content': 'Hello'}]"
    if messages is None:
        raise RequestError(f"messages is missing: give the conversation as {shape}.", "messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"messages must be {shape}, got {messages!r}.", "messages")
    turns = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be a {{role, content}} object, got {message!r}.", where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}.", f"{where}.role")
        turns.append({"role": ROLES[role], "content": text_of(message.get("content"), f"{where}.content")})
    return turns


def text_of(content: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of text parts (joined with spaces)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        for index, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(
                    f"{where}[{index}] must be a text part {{'type': 'text', 'text': ...}} (this is a text model), "
                    f"got {part!r}.",
                    f"{where}[{index}]",
                )
        return " ".join(part["text"] for part in content)
    raise RequestError(f"{where} must be a string (or a list of text parts), got {content!r}.", where)


def whole_number(body: dict, name: str, minimum: int, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RequestError(f"{name} must be a whole number of at least {minimum}, got {value!r}.", name)
    return value


def number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}.", name)
    return float(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-instruct serve",
        description="Serve a saved chat model over an OpenAI-compatible API (/v1/chat/completions, /v1/models).",
    )
    parser.add_argument("model", help="A model folder saved by a stage (or any saved causal LM or LoRA adapter).")
    parser.add_argument("--host", default="localhost", help="Address to listen on (default: %(default)s).")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on (default: %(default)s).")
    parser.add_argument(
        "--request_timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT,
        help="Seconds a request may take, queueing included; then it ends with a 504 (default: %(default)s).",
    )
    parser.add_argument(
        "--device", help="Where the model runs, e.g. cpu, cuda, cuda:1 (default: cuda if there is one, else cpu)."
    )
    return parser


def serve(argv: list[str]) -> None:
    """Serve until SIGTERM or Ctrl-C: the running generation is stopped, open requests are answered (503) and the
    process returns normally (exit code 0)."""
    args = build_parser().parse_args(argv)
    if not args.request_timeout > 0:
        raise ValueError(f"--request_timeout must be above 0 seconds, got {args.request_timeout:g}.")
    if not all(importlib.util.find_spec(name) for name in ("starlette", "uvicorn")):
        raise ValueError('serving needs Starlette and uvicorn: pip install "hf-instruct[serving]".')
    import uvicorn

    model, tokenizer = load_chat_model(args.model)
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chat = ChatServer(args.model, model, tokenizer, args.request_timeout)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            chat.stop()  # uvicorn waits for open requests: let them end now
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        chat.app(), host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=SHUTDOWN_GRACE
    )
    server = Server(config)
    print(
        f"hf-instruct serve: {args.model} ({chat.context_length} tokens of context) on "
        f"http://{args.host}:{args.port}/v1; requests time out after {args.request_timeout:g} s",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn re-raises the signal that stopped it once it has shut down, to the handler it found: this one, so that
    # a stop after a clean shutdown is a normal exit, not a death by SIGTERM or a KeyboardInterrupt traceback.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.handle_exit)
    server.run()
    chat.worker.shutdown(wait=True, cancel_futures=True)
