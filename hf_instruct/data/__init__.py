"""Loading and normalising data for every stage: raw text, instructions, comparisons and RL prompts."""

from .instructions import load_instruction_dataset, to_messages
from .preferences import load_preference_dataset, parse_hh_transcript, to_preference
from .prompts import load_prompt_dataset, to_prompt
from .records import BadRecordError, read_records
from .text import load_text_dataset, pack_texts

__all__ = [
    "BadRecordError",
    "load_instruction_dataset",
    "load_preference_dataset",
    "load_prompt_dataset",
    "load_text_dataset",
    "pack_texts",
    "parse_hh_transcript",
    "read_records",
    "to_messages",
    "to_preference",
    "to_prompt",
]
