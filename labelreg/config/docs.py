"""Generated reference pages of the INI schemas: one Markdown table per section, the options of
every component of a registry, and the command that rewrites a page's generated block."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from labelreg.config.components import Selector
from labelreg.config.engine import Schema, _format_default, _format_scalar

__all__ = ["schema_markdown", "components_markdown", "replace_generated_block", "docs_command"]


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def schema_markdown(schema: Schema, section_docs: Mapping[str, str] | None = None) -> str:
    """Markdown reference of a schema: one table per section (key, type, default, meaning).

    Args:
        schema: the schema to describe.
        section_docs: optional one-paragraph description per section.

    Returns:
        Markdown text ending with a newline.
    """
    out: list[str] = []
    for section, keys in schema.items():
        out.append(f"### [{section}]")
        out.append("")
        if section_docs and section in section_docs:
            out.append(section_docs[section])
            out.append("")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for name, key in keys.items():
            meaning = key.doc
            if key.choices is not None:
                meaning += " Choices: " + ", ".join(f"`{c}`" for c in key.choices) + "."
            if key.min is not None or key.max is not None:
                lo = "-inf" if key.min is None else _format_scalar(key.min)
                hi = "inf" if key.max is None else _format_scalar(key.max)
                meaning += f" Range: [{lo}, {hi}]."
            default = _format_default(key)
            default = default if default in ("required", "unset") else f"`{default}`"
            out.append(
                f"| `{name}` | {key.kind} | {_markdown_cell(default)} | {_markdown_cell(meaning)} |"
            )
        out.append("")
    return "\n".join(out)


def replace_generated_block(path: str | os.PathLike, block: str, begin: str, end: str) -> Path:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in place of the text
    between those markers in a Markdown file, or append it when the file has no such block."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text:
        text = text.split(begin, 1)[0] + block + text.split(begin, 1)[1].split(end, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def components_markdown(selectors: Iterable[Selector]) -> str:
    """The options every entry of each selector's registry declares, one table per entry and
    section (``### [Network] options of network_type = centroid_align``); empty when none
    declares any."""
    out = []
    for selector in selectors:
        for name in selector.registry:
            options = selector.registry.options(name)
            if options is None:
                continue
            for section, keys in options.keys.items():
                table = schema_markdown({section: keys}).split("\n", 2)[2]
                intro = f"{options.docs}\n\n" if options.docs else ""
                out.append(f"### [{section}] options of {selector.key} = {name}\n\n{intro}{table}")
    return "\n".join(out)


def docs_command(argv: Sequence[str], update: Callable[[str], object], module: str) -> int:
    """``python -m <module> DOCS_MD``: rewrite the generated reference block of one file with
    ``update(path)``; ``-h``/``--help`` or another argument count prints the usage instead
    (an option is never taken for a file name)."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print(f"usage: python -m {module} DOCS_MD   (rewrites the generated reference block)")
        return 0 if list(argv) in (["-h"], ["--help"]) else 2
    update(argv[0])
    print(f"updated {argv[0]}")
    return 0
