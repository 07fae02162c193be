"""The README, CHANGELOG.md, docs/ and benchmarks/README.md: every command they show exists with the flags they give,
and every link points at a file and heading that exist. (The README's tiny chain is run in tests/test_recipes.py.)"""

import re
from pathlib import Path

import pytest
from conftest import REPO

from hf_instruct import serving
from hf_instruct.cli import build_parser
from hf_instruct.stages import STAGES
from hf_instruct.stages.parsing import StageParser

PAGES = [
    REPO / "README.md",
    REPO / "CHANGELOG.md",
    REPO / "benchmarks" / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
]
CODE_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)  # its language and its text


def shown_commands(page: Path) -> list[str]:
    """Every command of the page's code blocks that runs hf-instruct or a recipe script, without comments."""
    commands = []
    for language, block in CODE_BLOCK.findall(page.read_text()):
        if language not in ("bash", ""):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split("#")[0].split("&&"):
                if command.split()[:1] == ["hf-instruct"] or re.search(r"recipes/\w+\.py", command):
                    commands.append(" ".join(command.split()))
    return commands


def accepted_flags(command: str) -> set[str]:
    """The flags the parser of an `hf-instruct <command>` (or of a recipe script, i.e. its stage) accepts."""
    if command in STAGES:
        parser = StageParser([STAGES[command].config_class])
        return set(parser._option_string_actions) | {"--config"}  # TrlParser reads it
    if command == "serve":
        return set(serving.build_parser()._option_string_actions)
    subcommands = build_parser()._subparsers._group_actions[0].choices
    if command == "data export":
        subcommands = subcommands["data"]._subparsers._group_actions[0].choices
        command = "export"
    return set(subcommands[command]._option_string_actions)


COMMANDS = [(page, command) for page in PAGES for command in shown_commands(page)]


@pytest.mark.parametrize(
    "page, command", COMMANDS, ids=[f"{page.relative_to(REPO)}: {command[:60]}" for page, command in COMMANDS]
)
def test_every_command_shown_exists_with_its_flags(page, command):
    for path in re.findall(r"recipes/[\w/.-]+\.(?:yaml|py)", command):
        assert (REPO / path).is_file(), f"{page.name}: `{command}`: {path} does not exist"
    script = re.search(r"recipes/(\w+)\.py(.*)", command)
    if script:
        name, arguments = script[1], script[2]
    else:
        words = command.split()
        name = " ".join(words[1:3]) if words[1:2] == ["data"] else words[1]
        arguments = " ".join(words[2:])
    if name.startswith("<"):  # a placeholder
        return
    flags = set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", arguments))
    assert flags <= accepted_flags(name), f"{page.name}: `{command}` uses {sorted(flags - accepted_flags(name))}"


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose(page: Path) -> str:
    """The page without its code blocks (a `#` comment there is no heading, a card excerpt's links not ours)."""
    return CODE_BLOCK.sub("", page.read_text())


def anchors(page: Path) -> set[str]:
    return {github_anchor(heading) for heading in re.findall(r"^#+ (.+)$", prose(page), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(REPO)) for page in PAGES])
def test_every_link_points_at_a_file_and_heading_that_exist(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: link to {target}: no such heading"
