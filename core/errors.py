"""Errors that say what is wrong and where (a config key, a file and line, a stage and step).

main.py shows their message alone, without a traceback, and the run's main.log has it too; anything else
keeps its traceback (a bug of rexlab's or of a library)."""

from __future__ import annotations


class NamedError(Exception):
    """An error whose message names the fault and where it is; the run stops with it, nothing is guessed."""


class NonFiniteError(NamedError, RuntimeError):
    """A training stage met a non-finite number (loss, gradient norm, weights, rewards). The stage stops
    before saving its model; its last good checkpoint stays."""
