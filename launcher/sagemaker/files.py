"""Parse and validate the three JSON files of `input/config/` into `launcher.sagemaker.tree` types.

Every check raises `ConfigError` naming the file and the key, with a hint. Files are read only
when they are regular files under a size cap (a FIFO or /dev/zero must not hang `train`), must
be UTF-8 JSON objects without duplicate keys, and every value the launcher relies on is
type-checked. Hyperparameters are decoded exactly as sagemaker-training 5.1.4 does, except
that a JSON-encoded string nesting deeper than `MAX_NESTING` is refused (the toolkit dies of a
RecursionError on it).

No value from a file nests deeper than `MAX_NESTING` levels once loaded, so every recursive
step after loading (encoding into SM_* variables, repr, the checks here) stays far below
Python's recursion limit. Nothing but `ConfigError` leaves this module for any file content:
RecursionError and the interpreter's integer-digit limit are turned into one line that names
the top-level key they occur under. Messages show keys and values shortened (`shown`,
`key_text`), so that a huge or multi-line value still gives one short line.
"""

from __future__ import annotations

import json
import re
import reprlib
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from launcher.errors import ConfigError
from launcher.sagemaker.tree import (
    DEFAULT_GROUP,
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_INTERFACE,
    LAUNCHER_PREFIX,
    MAX_CONFIG_BYTES,
    MAX_NESTING,
    RESERVED_HYPERPARAMETERS,
    Hyperparameters,
    InstanceGroup,
    ResourceConfig,
)


def read_object(path: Path) -> dict[str, Any]:
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(
                path,
                None,
                "is a directory, not a JSON file",
                hint="replace it with the JSON file SageMaker writes there",
            )
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block, /dev/zero never end
            raise ConfigError(
                path,
                None,
                "is not a regular file",
                hint="replace it with the JSON file SageMaker writes there",
            )
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grows meanwhile
    except FileNotFoundError:
        raise ConfigError(path, None, "is missing", hint="SageMaker writes it; create it") from None
    except PermissionError:
        raise ConfigError(
            path,
            None,
            "cannot be read (permission denied)",
            hint="make it readable by the user that runs train",
        ) from None
    except OSError as e:
        raise ConfigError(
            path,
            None,
            f"cannot be read: {e.strerror or e}",
            hint="check the file and the volume it is on",
        ) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            path,
            None,
            f"is over the {MAX_CONFIG_BYTES}-byte limit",
            hint="SageMaker writes a few kilobytes here: regenerate the file",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            path, None, f"is not UTF-8 (byte {e.start})", hint="save the file as UTF-8"
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise ConfigError(
            path, key_text(e.key), "appears twice", hint="keep one of the two entries"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            path,
            None,
            f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
            hint="fix the JSON at that position (python -m json.tool FILE points at it)",
        ) from None
    except RecursionError:  # about 1000 levels: the C decoder's own recursion check
        raise _too_deep(path, _locate(text)) from None
    except ValueError:  # an integer literal over the interpreter's digit limit (4300)
        raise ConfigError(
            path,
            _locate(text, digits=True),
            f"holds an integer of more than {sys.get_int_max_str_digits()} digits",
            hint="write the number as a string, or in a shorter form",
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            path,
            None,
            f"must hold a JSON object, not {kind(value)}",
            hint='the file holds one JSON object, e.g. {"key": "value"}',
        )
    for key, item in value.items():
        if too_deep(item):
            raise _too_deep(path, key_text(key))
    return value


def _too_deep(path: Path, key: str | None) -> ConfigError:
    return ConfigError(
        path,
        key,
        f"nests too deeply (more than {MAX_NESTING} levels of lists and objects)",
        hint="flatten the value",
    )


def too_deep(value: object, limit: int = MAX_NESTING) -> bool:
    """Whether `value` nests lists and objects more than `limit` levels (`[]` is one level).

    Iterative, so that it is safe at any depth: it is the check that makes recursion safe.
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# JSON tokens that matter for locating a problem: strings (keys when followed by a colon),
# brackets, and integer literals (digits not part of a fraction or an exponent).
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"(\s*:)?|[\[\]{}]|(?<![\d.eE+-])-?\d+(?![\d.eE])')


def _locate(text: str, *, digits: bool = False) -> str | None:
    """The top-level key under which `text` first nests deeper than `MAX_NESTING` (or, with
    `digits`, holds an integer over the digit limit), for the message; None if not found.

    Runs only after `json.loads` failed, on text that parsed up to the problem.
    """
    limit = sys.get_int_max_str_digits() or sys.maxsize
    depth = 0
    key: str | None = None
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            if match.group(1) is not None and depth == 1:
                key = key_text(_json_string(token[: match.start(1) - match.start()]))
        elif token in ("[", "{"):
            depth += 1
            if not digits and depth > MAX_NESTING + 1:  # the file's own object is level 1
                return key
        elif token in ("]", "}"):
            depth -= 1
        elif digits and len(token.lstrip("-")) > limit:
            return key
    return None


def _json_string(token: str) -> str:
    try:
        decoded = json.loads(token)
    except ValueError:
        return token
    return decoded if isinstance(decoded, str) else token


_SHORT = reprlib.Repr()
_SHORT.maxstring = 40
_SHORT.maxother = 40
_SHORT.maxlong = 40
_SHORT.maxlevel = 2
_SHORT.maxlist = _SHORT.maxdict = 3


def shown(value: object) -> str:
    """`repr(value)` cut to a few dozen characters: for messages, which are one short line."""
    return _SHORT.repr(value)


def key_text(key: str) -> str:
    """A key as a message shows it: as is when printable and short, else shortened `repr`."""
    return key if key.isprintable() and len(key) <= 80 else shown(key)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


class NestingError(Exception):
    """A JSON-encoded hyperparameter nests deeper than `MAX_NESTING` levels once decoded."""


def decode_hyperparameter(value: Any) -> Any:
    """SageMaker's decoding: JSON-decode strings, keep the raw value when that fails.

    Raises `NestingError` when the decoded value would nest deeper than `MAX_NESTING`
    levels, including strings too deep for `json.loads` itself (its RecursionError, which the
    toolkit does not catch). A string that is not JSON, or holds an integer over the
    interpreter's digit limit, is kept as it is (a ValueError, as under the toolkit).
    """
    if not isinstance(value, str):
        return value  # the toolkit's json.loads raises TypeError and keeps it as is
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    except RecursionError:
        raise NestingError from None
    if too_deep(decoded):
        raise NestingError
    return decoded


def _unfit_for_environ(value: Any) -> str | None:
    """Why `value` (or a string inside it) cannot reach environ or argv; None when it can."""
    if isinstance(value, str):
        if "\0" in value:
            return "holds a NUL character"
        # json.loads turns "\\ud800" into a lone surrogate, which no environment can hold.
        return (
            None
            if value.isascii() or value.isprintable() or _utf8(value)
            else "holds a lone surrogate"
        )
    if isinstance(value, dict | list):
        parts = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        return next((p for p in map(_unfit_for_environ, parts) if p), None)
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def hyperparameters(path: Path, raw: dict[str, Any]) -> Hyperparameters:
    user: dict[str, Any] = {}
    sagemaker: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "":
            raise ConfigError(
                path,
                '""',
                "empty hyperparameter names cannot become arguments",
                hint="remove the hyperparameter with the empty name",
            )
        if "=" in key:  # SM_HP_<KEY> would not be a valid environment variable name
            raise ConfigError(
                path,
                key_text(key),
                "hyperparameter names cannot contain '='",
                hint="rename the hyperparameter",
            )
        try:
            decoded = decode_hyperparameter(value)
        except NestingError:
            raise _too_deep(path, key_text(key)) from None
        problem = _unfit_for_environ(key) or _unfit_for_environ(decoded)
        if problem:
            raise ConfigError(
                path,
                key_text(key),
                problem,
                hint="no environment variable or argument can hold it: remove it from the value",
            )
        if key.startswith(("sagemaker_", LAUNCHER_PREFIX)) or key in RESERVED_HYPERPARAMETERS:
            sagemaker[key] = decoded
        else:
            user[key] = decoded
    return Hyperparameters(MappingProxyType(user), MappingProxyType(sagemaker))


def str_hp(path: Path, hps: Hyperparameters, key: str) -> str:
    value = hps.sagemaker.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(
            path, key, f"must be a string, not {kind(value)}", hint="give a string value"
        )
    return value


def _host_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(
            path,
            key,
            f"must be a list of host names, not {kind(value)}",
            hint='e.g. "hosts": ["algo-1", "algo-2"]',
        )
    if not value:
        raise ConfigError(
            path, key, "must name at least one host", hint='e.g. "hosts": ["algo-1", "algo-2"]'
        )
    seen: set[str] = set()
    for host in value:
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(
                path,
                key,
                f"holds an invalid host name {shown(host)}",
                hint="use plain host names such as algo-1",
            )
        if any(c.isspace() for c in host):
            raise ConfigError(
                path,
                key,
                f"host name {shown(host)} contains whitespace",
                hint="use plain host names such as algo-1",
            )
        if not host.isprintable() or _unfit_for_environ(host):
            raise ConfigError(
                path,
                key,
                f"host name {shown(host)} contains control characters",
                hint="use plain host names such as algo-1",
            )
        if host in seen:
            raise ConfigError(
                path, key, f"names host {shown(host)} twice", hint="list each host once"
            )
        seen.add(host)
    return tuple(value)


def _opt_str(path: Path, raw: Mapping[str, Any], key: str, default: str, where: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(
            path,
            where + key,
            f"must be a string, not {kind(value)}",
            hint="give a non-empty string, or leave the key out for the default",
        )
    if not value:
        raise ConfigError(
            path,
            where + key,
            "must not be empty",
            hint="give a non-empty string, or leave the key out for the default",
        )
    problem = _unfit_for_environ(value)
    if problem:
        raise ConfigError(
            path,
            where + key,
            problem,
            hint="give a non-empty string, or leave the key out for the default",
        )
    return value


def resources(path: Path, raw: dict[str, Any]) -> ResourceConfig:
    for key in ("current_host", "hosts"):
        if key not in raw:
            raise ConfigError(
                path,
                key,
                "is missing",
                hint="resourceconfig.json needs both current_host and hosts",
            )
    hosts = _host_list(path, "hosts", raw["hosts"])
    current = raw["current_host"]
    if not isinstance(current, str) or not current:
        raise ConfigError(
            path,
            "current_host",
            f"must be a host name, not {kind(current)}",
            hint="set current_host to this host's own entry in hosts",
        )
    if current not in hosts:
        raise ConfigError(
            path,
            "current_host",
            f"{shown(current)} is not one of hosts {shown(list(hosts))}",
            hint="set current_host to this host's own entry in hosts",
        )
    groups_raw = raw.get("instance_groups", [])
    if not isinstance(groups_raw, list):
        raise ConfigError(
            path,
            "instance_groups",
            f"must be a list, not {kind(groups_raw)}",
            hint="leave it out, or make it a list of groups",
        )
    groups: list[InstanceGroup] = []
    for i, group in enumerate(groups_raw):
        key = f"instance_groups[{i}]"
        if not isinstance(group, dict):
            raise ConfigError(
                path,
                key,
                f"must be an object, not {kind(group)}",
                hint="each group is an object with instance_group_name, instance_type and hosts",
            )
        name = _opt_str(path, group, "instance_group_name", "", where=f"{key}.")
        if any(g.name == name for g in groups):
            raise ConfigError(
                path,
                f"{key}.instance_group_name",
                f"{shown(name)} is used twice",
                hint="give every group its own instance_group_name",
            )
        group_hosts = _host_list(path, f"{key}.hosts", group.get("hosts"))
        strangers = [h for h in group_hosts if h not in hosts]
        if strangers:
            raise ConfigError(
                path,
                f"{key}.hosts",
                f"{shown(strangers)} are not in hosts",
                hint="every group's hosts must also be listed in hosts",
            )
        itype = group.get("instance_type", DEFAULT_INSTANCE_TYPE)
        groups.append(InstanceGroup(name, str(itype), group_hosts, MappingProxyType(group)))
    topology = raw.get("topology", [])
    if not isinstance(topology, list):
        raise ConfigError(
            path,
            "topology",
            f"must be a list, not {kind(topology)}",
            hint="leave it out, or make it a list",
        )
    return ResourceConfig(
        current_host=current,
        hosts=hosts,
        current_group_name=_opt_str(path, raw, "current_group_name", DEFAULT_GROUP),
        current_instance_type=_opt_str(path, raw, "current_instance_type", DEFAULT_INSTANCE_TYPE),
        network_interface_name=_opt_str(path, raw, "network_interface_name", DEFAULT_INTERFACE),
        instance_groups=tuple(groups),
        topology=tuple(topology),
        raw=MappingProxyType(raw),
    )


def input_data(path: Path, raw: dict[str, Any]) -> Mapping[str, Any]:
    for name, spec in raw.items():
        # The name becomes a path component and part of an environment variable name.
        bad = not name or "/" in name or "=" in name or name in (".", "..")
        if bad or not name.isprintable() or _unfit_for_environ(name):
            raise ConfigError(
                path,
                shown(name),
                "is not a valid channel name",
                hint="rename the channel: no '/', '=', '.', '..' or control characters",
            )
        if not isinstance(spec, dict):
            raise ConfigError(
                path,
                key_text(name),
                f"must be an object, not {kind(spec)}",
                hint='e.g. "training": {"TrainingInputMode": "File"}',
            )
    return MappingProxyType(raw)
