"""--help, generated from the config classes: every key with its type, default, meaning (the
comment beside the field in schema.py) and choices. Imports: stdlib.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from distrec.config.reads import text as _text, use_of
from distrec.config.schema import CHOICES, Config


def describe() -> list[str]:
    """`key (type, default): meaning` for every key, the meaning read from the comments in this
    file (a trailing `# ...`, or the comment lines just above the field)."""
    lines: list[str] = []

    def walk(cls: type, prefix: str, default: Any) -> None:
        meanings = field_meanings(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            if dataclasses.is_dataclass(hints[f.name]):
                used = f" (used with {meanings[f.name]})" if meanings.get(f.name) else ""
                lines.append(f"{key}: {hints[f.name].__doc__.splitlines()[0]}{used}")
                walk(hints[f.name], key + ".", getattr(default, f.name))
                continue
            meaning = meanings.get(f.name, "")
            use = use_of(key)
            if use is not None and use.key == key:  # sections say it on their own line
                meaning += f" (read only with {use.where})"
            if key in CHOICES:
                meaning += f" [{' | '.join(CHOICES[key])}]"
            lines.append(f"  {key} ({_type_name(hints[f.name])}, {_text(getattr(default, f.name))}): {meaning}")

    walk(Config, "", Config())
    return lines


def field_meanings(cls: type) -> dict[str, str]:
    """Field name -> the comments that document it in the class's source, as one line."""
    import inspect  # only --help and its test need it

    meanings, above = {}, []
    fields = {f.name for f in dataclasses.fields(cls)}
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("#").strip())
            continue
        name = text.partition(":")[0]
        if name in fields and line.startswith("    ") and not line.startswith("     "):
            trailing = text.partition("  # ")[2] if "  # " in text else ""
            meanings[name] = "; ".join(part for part in (" ".join(above), trailing) if part)
        above = []
    return meanings


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return f"{_type_name(args[0])} or null"
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return f"list of {len(args)} {_type_name(args[0])}"
    return hint.__name__
