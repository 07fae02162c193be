"""Parsing a stage's config: `--config file.yaml` plus `--field value` overrides, or a pipeline YAML's section, with
every mistake said in one line naming the file, key and value (and the closest field name where one is close)."""

import argparse
import difflib
import os
import sys
from collections.abc import Iterable
from typing import TypeVar

import yaml
from transformers import TrainingArguments
from trl import TrlParser

ConfigT = TypeVar("ConfigT", bound=TrainingArguments)
# how alike a mistyped name and a field must be to suggest it (difflib's 0.6 offered 'ddp_backend' for 'backend')
HINT_CUTOFF = 0.8


class StageParser(TrlParser):
    """`TrlParser` whose errors are one-line `ValueError`s (the CLI prints them) instead of a usage dump, exit 2."""

    def error(self, message: str):
        raise ValueError(f"{message} (see --help).")


def parse_config(config_class: type[ConfigT], args: list[str] | None = None, prog: str | None = None) -> ConfigT:
    """`--config file.yaml` (every key a field of `config_class`) plus `--field value` overrides; `prog` names the
    command in `--help` ("hf-instruct sft")."""
    args = list(sys.argv[1:] if args is None else args)
    parser = StageParser([config_class], prog=prog)
    if "--config" in args:
        index = args.index("--config") + 1
        path = args[index] if index < len(args) else None
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(f"--config {path}: no such file.")
        check_config_file(parser, path)
    (config,) = parser.parse_args_and_config(args)
    return config


def parse_fields(config_class: type[ConfigT], fields: dict, where: str) -> ConfigT:
    """A stage config from a mapping of its fields (a section of a pipeline YAML), checked, converted and built as
    the keys of a `--config` file are; every error starts with `where`."""
    parser = StageParser([config_class])
    check_config_values(parser, fields, where)
    parser.set_defaults_with_config(**fields)
    try:
        (config,) = parser.parse_args_into_dataclasses(args=[])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error
    return config


def did_you_mean(name: str, names: Iterable[str], otherwise: str = "") -> str:
    """ "did you mean '<closest>'?" for a mistyped name (config keys, model_config keys, pipeline stages), else
    `otherwise`."""
    close = difflib.get_close_matches(name, names, n=1, cutoff=HINT_CUTOFF)
    return f"did you mean {close[0]!r}?" if close else otherwise


def read_config_file(path: str | os.PathLike, where: str | None = None) -> dict:
    """The fields of a stage's YAML file (a mapping of field: value); an error starts with `where` (else the path)."""
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f)  # a yaml.YAMLError names the file, line and column
    if not isinstance(values, dict):
        raise ValueError(f"{where or path}: must be a YAML mapping of field: value.")
    return values


def check_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    """`check_config_values` for a YAML file, said with the file's name."""
    check_config_values(parser, read_config_file(path), path)


def check_config_values(parser: argparse.ArgumentParser, values: dict, where: str) -> None:
    """Every key a field, every scalar value one the field accepts, said with `where` (the file, the section).
    `TrlParser` makes the values argparse defaults: a bad string fails naming neither file nor key, and a bad number
    or bool is not checked at all (it fails later, deep in the trainer)."""
    actions = {}
    for action in parser._actions:  # the field's own action, not the `--no_<field>` complement of a bool
        actions.setdefault(action.dest, action)
    for key, value in values.items():
        if key == "env":  # TrlParser sets these environment variables
            continue
        if key not in actions:
            hint = did_you_mean(key, actions, otherwise="see --help for the fields")
            raise ValueError(f"{where}: unknown key {key!r} ({hint}).")
        action = actions[key]
        for item in value if isinstance(value, list) else [value]:
            if action.type is None or not isinstance(item, str | int | float | bool):
                continue
            try:
                converted = action.type(str(item))
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                expected = {"int": "an integer", "float": "a number", "string_to_bool": "true or false"}
                kind = expected.get(getattr(action.type, "__name__", ""), "another value")
                raise ValueError(f"{where}: {key}: {item!r} is not valid: expected {kind}.") from None
            if action.choices is not None and converted not in action.choices:
                choices = ", ".join(str(getattr(choice, "value", choice)) for choice in action.choices)
                quote = " (YAML reads an unquoted no/yes/off/on as a bool: quote it)" if isinstance(item, bool) else ""
                raise ValueError(f"{where}: {key}: {item!r} is not valid: expected one of {choices}{quote}.")
