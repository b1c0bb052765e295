"""Rule-based verifiers: plain functions and classes with no network (DESIGN.md section 2).

Each module holds one family; `builtin_verifiers()` is what `referee serve verifiers`
offers by default.
"""

from __future__ import annotations

from referee.verifier import Verifier


def builtin_verifiers() -> tuple[Verifier, ...]:
    """Every built-in verifier, imported on first use (math pulls in sympy)."""
    from referee.verifiers.choice import choice
    from referee.verifiers.code import code_reward
    from referee.verifiers.format import format_reward
    from referee.verifiers.ifeval import ifeval
    from referee.verifiers.json_check import json_reward
    from referee.verifiers.length import length
    from referee.verifiers.match import exact, normalized_match, regex
    from referee.verifiers.math_answer import math_reward
    from referee.verifiers.tool_call import tool_call

    return (math_reward, exact, normalized_match, regex, choice, format_reward, json_reward, length, code_reward, tool_call, ifeval)
