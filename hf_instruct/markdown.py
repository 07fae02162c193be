"""Markdown for logs, reports and cards."""


def table_cell(text: str, width: int = 80) -> str:
    """`text` on one line, pipes escaped and cut to `width` characters, to sit in a Markdown table cell."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"
