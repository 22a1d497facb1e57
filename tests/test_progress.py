"""Phases add up the time spent in each named part of a run."""

import time

import pytest

from gptclassifier.progress import Phases


def test_phases_add_up_in_the_order_they_first_ran():
    phases = Phases()
    with phases.measure("b"):
        time.sleep(0.02)
    with phases.measure("a"):
        pass
    with phases.measure("b"):
        time.sleep(0.02)
    assert list(phases.seconds) == ["b", "a"]
    assert phases.seconds["b"] >= 0.04 > phases.seconds["a"]
    assert phases.summary() == f"b {phases.seconds['b']:.1f} s, a {phases.seconds['a']:.1f} s"


def test_a_phase_that_fails_still_counts():
    phases = Phases()
    with pytest.raises(KeyError), phases.measure("failing"):
        raise KeyError("x")
    assert phases.seconds["failing"] >= 0
