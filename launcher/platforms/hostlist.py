"""Slurm's host-list grammar: `node[01-04,07],rack[1-2]-gpu[01-02],alpha` into host names.

Pure. The grammar, as `scontrol show hostnames` of Slurm 22.05 accepts it (checked against it
on the corpus in tests/unit/test_hostlist.py):

    list   := item (sep item)*      sep: `,` or white space outside brackets; empty items skipped
    item   := text (group text)*    no text may follow the last group: `n[1-2]x` is refused
    group  := `[` range (`,` range)* `]`
    range  := digits | digits `-` digits     low <= high; both decimal

An item's groups expand as a cartesian product in Slurm's own order: the last group varies
fastest, and every other group varies faster than the groups after it (`n[1-2]-[3-4]` is
n1-3 n1-4 n2-3 n2-4; `a[1-2]b[3-4]c[5-6]` is a1b3c5 a1b3c6 a2b3c5 a2b3c6 a1b4c5 ...).
A range is zero-padded to the width of its low bound (`[009-011]` is 009 010 011, `[1-0010]`
is 1 .. 10). The order of the list is kept and duplicates stay, as `scontrol` prints them.
One range may hold at most 65536 names (Slurm's own limit) and a whole list at most `MAX_HOSTS`.

Where Slurm is lenient about text it cannot mean (`n[1-]`, white space inside brackets, an
unclosed `[`) this module refuses with a `HostlistError` instead of guessing.
"""

from __future__ import annotations

import re

__all__ = ["MAX_HOSTS", "MAX_RANGE", "HostlistError", "expand"]

MAX_RANGE = 65536  # Slurm refuses a larger range: "Too many hosts in range"
MAX_HOSTS = 1 << 20  # a bound on the whole expansion, so a hostile string cannot exhaust memory

_RANGE = re.compile(r"([0-9]{1,18})(?:-([0-9]{1,18}))?")


class HostlistError(ValueError):
    """The text is not a Slurm host list; the message quotes the offending part."""


def expand(text: str) -> tuple[str, ...]:
    """Every host name of `text`, in order, duplicates kept. Raises `HostlistError`."""
    hosts: list[str] = []
    for item in _items(text):
        names = _expand_item(item)
        if len(hosts) + len(names) > MAX_HOSTS:
            raise HostlistError(f"host list {text[:80]!r} names more than {MAX_HOSTS} hosts")
        hosts.extend(names)
    return tuple(hosts)


def _items(text: str) -> list[str]:
    """Split at top-level commas and white space; brackets must balance and not nest."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            if depth:
                raise HostlistError(f"nested '[' in host list {text[:80]!r}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise HostlistError(f"unmatched ']' in host list {text[:80]!r}")
            depth = 0
        elif not depth and (ch == "," or ch.isspace()):
            if current:
                items.append("".join(current))
            current = []
            continue
        current.append(ch)
    if depth:
        raise HostlistError(f"unclosed '[' in host list {text[:80]!r}")
    if current:
        items.append("".join(current))
    return items


def _expand_item(item: str) -> list[str]:
    """One item (balanced, non-nested brackets): the product of its groups, in Slurm's order."""
    if "[" not in item:
        return [item]
    if not item.endswith("]"):
        raise HostlistError(f"text after the last ']' in {item[:80]!r}")
    # Split into the leading text, then (group, text after it) pairs; the last text is "".
    head, _, rest = item.partition("[")
    parts: list[tuple[list[str], str]] = []
    while rest:
        inner, _, rest = rest.partition("]")
        between, _, rest = rest.partition("[")
        parts.append((_group(inner, item), between))
    # Slurm's order (observed with scontrol, see the module docstring): every group but the last
    # varies faster than the groups after it, and the last group varies fastest of all.
    names = [head]
    for values, between in parts[:-1]:
        if len(names) * len(values) > MAX_HOSTS:
            raise HostlistError(f"{item[:80]!r} names more than {MAX_HOSTS} hosts")
        names = [f"{name}{value}{between}" for value in values for name in names]
    last = parts[-1][0]
    if len(names) * len(last) > MAX_HOSTS:
        raise HostlistError(f"{item[:80]!r} names more than {MAX_HOSTS} hosts")
    return [f"{name}{value}" for name in names for value in last]


def _group(inner: str, item: str) -> list[str]:
    """The values of one bracket group, each range padded to its low bound's width."""
    values: list[str] = []
    for part in inner.split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise HostlistError(f"invalid range {part!r} in {item[:80]!r}")
        low_text, high_text = match.group(1), match.group(2)
        low = int(low_text)
        high = low if high_text is None else int(high_text)
        if high < low:
            raise HostlistError(f"range {part!r} in {item[:80]!r} runs backwards")
        if high - low + 1 > MAX_RANGE:
            raise HostlistError(f"range {part!r} in {item[:80]!r} names more than {MAX_RANGE}")
        width = len(low_text)
        values.extend(str(n).zfill(width) for n in range(low, high + 1))
    return values
