"""The tools as a model sees them (names, descriptions, JSON schemas) and the check of a
call's arguments against those schemas.

Descriptions are written for a model: what the tool does, what persists, and the
operator's actual limits (the ceiling), so that a model asks for what it may have. The
schemas do not encode the ceiling (a timeout over it is a valid number): a call beyond it
reaches :mod:`.ceiling` and gets a refusal naming the operator's flag, not a schema error.

:func:`check_arguments` implements the part of JSON Schema these schemas use (types,
``required``, ``additionalProperties: false``, ``enum``, bounds, lengths, item counts),
with messages that name the argument and what it should be.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from union.sandbox.core.constants import PYPI_HOSTS

from .ceiling import BadArgument, Ceiling
from .runs import OutputLimits

__all__ = ["READ_CAP", "ToolSpec", "check_arguments", "instructions", "tool_specs"]

#: Most bytes ``read_file`` returns in one call (a model's context is the limit).
READ_CAP = 100_000
#: Largest file ``read_file`` reads at all (it pages through it with ``offset``).
READ_FILE_MAX = 64 * 1024 * 1024
#: Largest ``content`` of ``write_file`` (a message that big is already unusual).
WRITE_MAX = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    schema: dict[str, Any]
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    open_world: bool = False


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _run_options(ceiling: Ceiling) -> dict[str, Any]:
    """Arguments shared by the tools that run a command: each may only narrow the
    operator's limits."""
    network = {
        "blocked": "network: blocked (no network at all)",
        "open": "network: open (the host's network)",
        "allowlist": f"network: allowlist (only {', '.join(ceiling.allow)})",
    }[ceiling.mode]
    return {
        "timeout_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": f"Seconds before the command and everything it started are killed. "
            f"Default and maximum: {ceiling.timeout_s:g} (the operator's limit).",
        },
        "network": {
            "type": "string",
            "enum": ["blocked", "allowlist", "open"],
            "description": f"Network for this run. The operator allows {network}; a run may "
            "ask for less (e.g. 'blocked', or 'allowlist' with part of the allowed hosts), "
            "never more. Default: the operator's setting.",
        },
        "allow": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 300},
            "maxItems": 100,
            "description": "With network 'allowlist': the hosts this run may reach "
            "(hostname, *.domain, IP or CIDR, optional :port), within what the operator "
            "allows. Traffic goes through a filtering proxy (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY "
            "are set).",
        },
        "deny": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 300},
            "maxItems": 100,
            "description": "Extra hosts this run must not reach (same syntax as allow).",
        },
    }


def _command_options(ceiling: Ceiling) -> dict[str, Any]:
    return {
        **_run_options(ceiling),
        "cwd": _string(
            "Working directory, relative to the session's work dir (the default).",
            maxLength=4095,
        ),
        "env": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "maxProperties": 200,
            "description": "Extra environment variables for this run.",
        },
    }


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def tool_specs(ceiling: Ceiling, limits: OutputLimits) -> list[ToolSpec]:
    """Every tool of the server, described with the operator's ``ceiling``."""
    shown = f"the first {limits.head:,} and last {limits.tail:,} bytes of each stream"
    result = (
        "The result gives the exit code, how the command ended (exit, timeout, signal, out "
        f"of memory...), its runtime, stdout and stderr ({shown}; when longer, the middle is "
        "cut, the result says how much, and the whole stream is saved to a file of the work "
        "dir that read_file can page through), and every network connection the run tried "
        "with the proxy's verdict. A non-zero exit code is a normal result, not an error."
    )
    session = (
        "Runs in a sandbox session that persists across calls: files in the work dir (the "
        "default directory) and installed packages stay; /tmp and background processes do "
        "not outlive the command."
    )
    return [
        ToolSpec(
            "run_shell",
            "Run a shell command",
            f"Run a shell command line (/bin/sh -c) in the sandbox. {session} {result}",
            _object(
                {
                    "command": _string(
                        "The shell command line, e.g. 'ls -la && python3 script.py'.",
                        minLength=1,
                    ),
                    **_command_options(ceiling),
                },
                ["command"],
            ),
            destructive=True,
            open_world=ceiling.mode != "blocked",
        ),
        ToolSpec(
            "run_python",
            "Run Python code",
            "Run Python source code with the session's Python (its virtualenv holds what "
            f"install_packages installed). {session} Print what you want to see. {result}",
            _object(
                {
                    "code": _string("Python source code, run as a script.", minLength=1),
                    **_command_options(ceiling),
                },
                ["code"],
            ),
            destructive=True,
            open_world=ceiling.mode != "blocked",
        ),
        ToolSpec(
            "write_file",
            "Write a file",
            "Create or replace a file in the session's work dir (missing parent directories "
            "are created). The file appears whole or not at all.",
            _object(
                {
                    "path": _string(
                        "File path, relative to the work dir (or absolute, inside it).",
                        minLength=1,
                        maxLength=4095,
                    ),
                    "content": _string(
                        "The file's content: text, or base64 with encoding='base64'.",
                        maxLength=WRITE_MAX * 4 // 3 + 4,
                    ),
                    "encoding": {
                        "type": "string",
                        "enum": ["text", "base64"],
                        "description": "'text' (UTF-8, the default) or 'base64' for bytes.",
                    },
                    "executable": {
                        "type": "boolean",
                        "description": "Make the file executable (mode 0755). Default false.",
                    },
                },
                ["path", "content"],
            ),
            destructive=True,
            idempotent=True,
        ),
        ToolSpec(
            "read_file",
            "Read a file",
            f"Read a file of the session's work dir, at most {READ_CAP:,} bytes per call: "
            "use offset to page through a longer one (the result says the file's size). Text "
            "is returned as UTF-8; use encoding='base64' for binary files.",
            _object(
                {
                    "path": _string(
                        "File path, relative to the work dir (or absolute, inside it).",
                        minLength=1,
                        maxLength=4095,
                    ),
                    "encoding": {
                        "type": "string",
                        "enum": ["text", "base64"],
                        "description": "'text' (the default) or 'base64'.",
                    },
                    "offset": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Byte offset to start at (default 0).",
                    },
                    "length": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": READ_CAP,
                        "description": f"Most bytes to return (default and maximum {READ_CAP:,}).",
                    },
                },
                ["path"],
            ),
            read_only=True,
            idempotent=True,
        ),
        ToolSpec(
            "list_dir",
            "List a directory",
            "List a directory as the sandbox sees it: each entry's type (file, dir, link...), "
            "size and path. Default: the work dir.",
            _object(
                {
                    "path": _string(
                        "Directory, relative to the work dir (default '.') or absolute.",
                        maxLength=4095,
                    ),
                    "depth": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 5,
                        "description": "How many levels to descend (default 1).",
                    },
                },
                [],
            ),
            read_only=True,
            idempotent=True,
        ),
        ToolSpec(
            "install_packages",
            "Install Python packages",
            "Install Python packages into the session's virtualenv with `uv pip install`, "
            "for later run_python / run_shell calls. "
            + (
                "The operator allows it: the install reaches PyPI ("
                + ", ".join(PYPI_HOSTS)
                + ") through the filtering proxy."
                if _install_allowed(ceiling)
                else "The operator has not allowed network access to PyPI, so this tool "
                "will be refused."
            )
            + f" {result}",
            _object(
                {
                    "packages": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1, "maxLength": 300},
                        "minItems": 1,
                        "maxItems": 50,
                        "description": "Requirement specifiers, e.g. ['numpy', 'pandas>=2'].",
                    },
                    "timeout_s": _run_options(ceiling)["timeout_s"],
                },
                ["packages"],
            ),
            destructive=False,
            open_world=True,
        ),
        ToolSpec(
            "reset_session",
            "Reset the sandbox session",
            "Throw the sandbox session away and start over: running commands are killed, "
            "the work dir and installed packages are gone (unless the operator pinned the "
            "work dir), and the next call starts in a fresh session.",
            _object({}, []),
            destructive=True,
            idempotent=True,
        ),
    ]


def _install_allowed(ceiling: Ceiling) -> bool:
    try:
        ceiling.install_network()
    except Exception:
        return False
    return True


def instructions(ceiling: Ceiling) -> str:
    """The server's instructions: what a model should know before its first call."""
    return (
        "A live sandbox session for running untrusted code. Commands, files and installed "
        "packages persist across calls in the session's work dir until reset_session. "
        f"Network: {ceiling.describe_network()}; longest command: {ceiling.timeout_s:g} s. "
        "Calls may narrow these limits but never widen them (a request beyond them is "
        "refused and names the operator's flag that would allow it)."
    )


# -- the check --------------------------------------------------------------------------


def check_arguments(schema: Mapping[str, Any], arguments: object) -> dict[str, Any]:
    """``arguments`` when they satisfy ``schema``; else :class:`BadArgument` naming the
    argument and what it must be."""
    if arguments is None:
        arguments = {}
    _check(schema, arguments, "")
    assert isinstance(arguments, dict)
    return arguments


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def _check(schema: Mapping[str, Any], value: object, where: str) -> None:
    kind = schema.get("type")
    name = f"argument {where!r}" if where else "the arguments"
    if kind is not None:
        ok = isinstance(value, _TYPES[kind]) and not (
            kind in ("integer", "number") and isinstance(value, bool)
        )
        if kind == "number" and ok and not math.isfinite(float(value)):  # type: ignore[arg-type]
            ok = False
        if not ok:
            article = "an" if kind[0] in "aeiou" else "a"
            raise BadArgument(f"{name} must be {article} {kind}, got {_show(value)}")
    if "enum" in schema and value not in schema["enum"]:
        options = ", ".join(repr(v) for v in schema["enum"])
        raise BadArgument(f"{name} must be one of {options}, got {_show(value)}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise BadArgument(f"{name} must not be empty")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise BadArgument(f"{name} is longer than {schema['maxLength']:,} characters")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "exclusiveMinimum" in schema and not value > schema["exclusiveMinimum"]:
            raise BadArgument(f"{name} must be greater than {schema['exclusiveMinimum']}")
        if "minimum" in schema and value < schema["minimum"]:
            raise BadArgument(f"{name} must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise BadArgument(f"{name} must be at most {schema['maximum']:,}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise BadArgument(f"{name} needs at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise BadArgument(f"{name} takes at most {schema['maxItems']} items")
        for index, item in enumerate(value):
            _check(schema.get("items", {}), item, f"{where}[{index}]")
    if isinstance(value, dict):
        _check_object(schema, value, where)


def _check_object(schema: Mapping[str, Any], value: dict[Any, Any], where: str) -> None:
    properties: Mapping[str, Any] = schema.get("properties", {})
    for key in schema.get("required", ()):
        if key not in value:
            raise BadArgument(f"missing required argument {_join(where, key)!r}")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        raise BadArgument(f"argument {where!r} takes at most {schema['maxProperties']} entries")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if not isinstance(key, str):
            raise BadArgument(f"argument names must be strings, got {_show(key)}")
        if key in properties:
            _check(properties[key], item, _join(where, key))
        elif extra is False:
            known = ", ".join(properties) or "none"
            raise BadArgument(f"unknown argument {_join(where, key)!r} (arguments: {known})")
        elif isinstance(extra, Mapping):
            _check(extra, item, _join(where, key))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
