"""Publishing a saved model folder to the Hugging Face Hub in one commit: `hf-instruct push` and `push_to_hub: true`.

Uploads the weights (safetensors), config with `auto_map` and the model code, tokenizer and chat template,
generation config, run record, plot and the model card, rendered for any saved model folder with the repo id in its
quick-start snippet (a README.md the user wrote is kept unless they ask for ours). Checkpoints and trainer internals
stay local. The token comes from the usual places (`HF_TOKEN`, `hf auth login`) and is never printed or written
anywhere.
"""

import json
import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from .checkpoints import INCOMPLETE_PREFIX
from .model_card import is_generated_card, model_card_files
from .utils import is_hub_id

# What of a run folder is not the model: checkpoints (and those a resume skipped), tensorboard runs, trainer internals.
LOCAL_ONLY_DIRS = ("checkpoint-", INCOMPLETE_PREFIX, "runs", "_")
LOCAL_ONLY_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")
MODEL_FILES = ("config.json", "adapter_config.json")
CARD_CHOICES = ("keep", "regenerate")


class PushError(RuntimeError):
    """A push that cannot happen, with the reason and the fix."""


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    base_model_repo_id: str | None = None,
    card: str | None = None,
    license: str | None = None,
    token: str | None = None,
) -> str:
    """Create `repo_id` if needed and upload the model in `folder` as one commit; returns the commit URL.

    `repo_id` without a namespace goes to the token's user. For a LoRA adapter trained from a local base model,
    `base_model_repo_id` names the base model's Hub repo, written into the uploaded adapter config and the card.
    `card`: "regenerate" uploads our card, "keep" the folder's README.md as it is (ours when it has none); by default
    the folder's README.md is kept when its user wrote it, and replaced when a program did (ours, or the Trainer's
    generic draft).
    `license`: the card's license (default: apache-2.0 for an hf-instruct run, else "unknown").
    """
    folder = Path(folder)
    if not any((folder / name).is_file() for name in MODEL_FILES):
        raise PushError(f"{folder} is not a saved model: it has no config.json or adapter_config.json.")
    if card not in (None, *CARD_CHOICES):
        raise PushError(f"card={card!r} is not one of {', '.join(CARD_CHOICES)}.")
    token = token or get_token()
    if not token:
        raise PushError("No Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again.")
    api = HfApi(token=token)
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        validate_repo_id(repo_id)
        operations = _operations(folder, repo_id, base_model_repo_id, card, license)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or f"Upload {folder.name} with hf-instruct",
            revision=revision,
        )
    except HFValidationError as error:
        raise PushError(f"{repo_id!r} is not a valid repo id ('namespace/name'): {error}") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise PushError("The Hub rejected the token (401): check HF_TOKEN or run `hf auth login`.") from None
        if status == 403:
            raise PushError(
                f"The token may not write to {repo_id} (403): use a token with write access to its namespace."
            ) from None
        raise
    return commit.commit_url


def _operations(
    folder: Path, repo_id: str, base_model_repo_id: str | None, card: str | None, license: str | None
) -> list[CommitOperationAdd]:
    """The files of the commit: the folder minus the local-only ones, with the card (and an adapter's base model)
    rewritten for the Hub."""
    paths = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not path.relative_to(folder).parts[0].startswith(LOCAL_ONLY_DIRS)
        and path.name not in LOCAL_ONLY_FILES
    )
    overrides = {}
    readme = folder / "README.md"
    if card == "regenerate" or not readme.is_file() or (card is None and is_generated_card(readme)):
        overrides.update(model_card_files(folder, repo_id, license=license, base_model=base_model_repo_id))
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        config = json.loads(adapter_config.read_text())
        base = base_model_repo_id or config.get("base_model_name_or_path")
        if not is_hub_id(base):
            raise PushError(
                f"The adapter's base model {base!r} is a local folder, so the pushed adapter could not be loaded "
                "anywhere else: push the base model too and pass its repo id (--base_model_repo_id)."
            )
        overrides["adapter_config.json"] = json.dumps({**config, "base_model_name_or_path": base}, indent=2).encode()
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in overrides.items()
    ]
    for path in paths:
        name = path.relative_to(folder).as_posix()
        if name not in overrides:
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)))
    return operations
