"""Model cards written next to every saved model (and, later, pushed with it to the Hub)."""

import os
import platform
from importlib.resources import files
from pathlib import Path

import torch
import transformers
import trl
from huggingface_hub import ModelCard, ModelCardData

from . import __version__

TEMPLATE = files("hf_instruct.model_cards") / "model_card.md.jinja"


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    stage: str,
    model: torch.nn.Module,
    steps: int,
    wall_time_s: float,
    hyperparameters: dict,
    metrics: dict | None = None,
    data: str | None = None,
    base_model: str | None = None,
) -> Path:
    """Render `model_cards/model_card.md.jinja` into `<output_dir>/README.md`; unknown fields are left out."""
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification" if stage == "reward" else "text-generation",
        license="apache-2.0",
        tags=["hf-instruct", stage],
        base_model=base_model if is_hub_id(base_model) else None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=Path(output_dir).resolve().name,
        model_id=Path(output_dir).resolve().name,
        summary=f"An InstructGPT-style model after the **{stage}** stage of hf-instruct.",
        stage=stage,
        base_model=base_model,
        data=data,
        parameters=f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M",
        steps=steps,
        hyperparameters={k: v for k, v in hyperparameters.items() if v is not None},
        hardware=_hardware(),
        wall_time=f"{wall_time_s / 60:.1f} min",
        versions=f"hf-instruct {__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"torch {torch.__version__}",
        metrics={k: f"{v:.4g}" if isinstance(v, float) else v for k, v in (metrics or {}).items()},
    )
    path = Path(output_dir) / "README.md"
    card.save(path)
    return path


def is_hub_id(name: str | None) -> bool:
    """A Hub repo id ("org/name") rather than a local path."""
    return bool(name) and not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/"))


def _hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
