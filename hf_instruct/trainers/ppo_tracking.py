"""Tables of sample answers for the trackers a `Trainer` reports to (`report_to`), beside `samples.jsonl`.

A Trainer's logs are scalars, so the stock tracker callbacks never see a table. `send_sample_table` hands one to each
tracker callback the Trainer holds, in the form that tracker keeps tables: a `Table` for Weights & Biases and Trackio
(as TRL's GRPO logs its completions), a Markdown text for TensorBoard, a JSON table artifact for MLflow; and to any
callback with an `on_samples(args, state, control, key=..., samples=...)` method (your own logger, or a test).
"""

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import MLflowCallback, TensorBoardCallback, TrackioCallback, WandbCallback

from ..utils import markdown_table, table_cell


def send_sample_table(
    callbacks: list[TrainerCallback],
    args: TrainingArguments,
    state: TrainerState,
    control: TrainerControl,
    key: str,
    samples: list[dict],
) -> None:
    """Send `samples` (rows of equal keys) as the table `key` to every tracker among `callbacks` that is running."""
    columns = list(samples[0])
    data = [[row[column] for column in columns] for row in samples]
    for callback in callbacks:
        if hasattr(callback, "on_samples"):
            callback.on_samples(args, state, control, key=key, samples=samples)
        elif isinstance(callback, WandbCallback | TrackioCallback) and getattr(callback, "_initialized", False):
            backend = callback._wandb if isinstance(callback, WandbCallback) else callback._trackio
            backend.log({key: backend.Table(columns=columns, data=data), "train/global_step": state.global_step})
        elif isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            cells = [[table_cell(str(value), None) for value in row] for row in data]
            callback.tb_writer.add_text(key, "\n".join(markdown_table(columns, cells)), state.global_step)
        elif isinstance(callback, MLflowCallback) and getattr(callback, "_initialized", False):
            table = {column: [row[column] for row in samples] for column in columns}
            callback._ml_flow.log_table(data=table, artifact_file=f"{key}/step_{state.global_step:07d}.json")
