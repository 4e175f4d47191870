"""Toy rewards for the RL tests, in the verifier signature (`module:function(question, reply, reference)`)."""

from __future__ import annotations


def contains_five(question: str, reply: str, reference: str | None) -> float:
    """1 when the reply contains the digit 5: a behaviour the tiny SFT model shows in about one reply in
    five, so a policy that learns from the reward raises its rate far above that."""
    return float("5" in reply)


def broken(question: str, reply: str, reference: str | None) -> float:
    raise ZeroDivisionError("a verifier bug")
