"""SettingsError and the translation of pydantic's validation errors into its one line.

Start-up must say what is wrong in exactly one line naming the variable, `MAILROOM_<NAME>:
<problem> (got <value>)`, and must never echo a secret; pydantic's own messages are multi-line,
name fields rather than variables, and would print the input.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import ErrorDetails

ENV_PREFIX = "MAILROOM_"

_PROBLEMS = {
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be text",
    "extra_forbidden": "is not a known setting",
}
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


class SettingsError(ValueError):
    """A bad setting; str() is one line: `MAILROOM_<NAME>: <problem>`."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return f"{ENV_PREFIX}{field.upper()}"


def one_line(error: ErrorDetails, secret_fields: frozenset[str]) -> SettingsError:
    """Turn one pydantic error into a SettingsError; inputs of `secret_fields` are not shown."""
    ctx = error.get("ctx", {})
    cause = ctx.get("error")
    if isinstance(cause, SettingsError):
        return cause
    field = str(error["loc"][0]) if error["loc"] else ""
    variable = env_name(field) if field else f"{ENV_PREFIX}*"
    if isinstance(cause, ValueError):
        # Our validators' messages already show the input when it is safe to.
        problem = str(cause)
    else:
        limit = next(
            (f"must be {op} {ctx[key]}" for key, op in _BOUNDS.items() if key in ctx), None
        )
        problem = limit or _PROBLEMS.get(error["type"], error["msg"])
        if field not in secret_fields and error["type"] != "extra_forbidden":
            problem += f" (got {_short(error.get('input'))})"
    return SettingsError(variable, " ".join(problem.split()))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
