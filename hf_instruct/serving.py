"""`hf-instruct serve`: transformers' own OpenAI-compatible server (`transformers serve`) for hf-instruct models.

That server loads a model as `getattr(transformers, config.architectures[0])`, which only classes that ship inside
transformers pass: `transformers serve --trust-remote-code` on our checkpoints dies with an AttributeError. Naming our
causal LM on the `transformers` module in this process (never on `import hf_instruct`) is all it takes; the endpoints,
streaming, continuous batching on paged attention and `transformers chat` as a client are transformers' own code.
"""

import transformers

from .models.instructgpt import InstructGPTForCausalLM


def serve(argv: list[str]) -> None:
    """`transformers serve` with its own arguments (`<model> --port 8000 --continuous-batching ...`); exits when the
    server stops, with its status, as that command does."""
    from transformers.cli.transformers import app
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise ValueError('serving needs FastAPI, uvicorn and openai: pip install "hf-instruct[serving]".')
    transformers.InstructGPTForCausalLM = InstructGPTForCausalLM
    app(args=["serve", *argv], prog_name="hf-instruct")
