"""Paired timing: ratios come from times of the same round, so a machine that slows down between two
measurements does not move them. The callables here return scripted "seconds", so every check is exact."""

import pytest

from unidistill.metrics import paired_ratio, paired_times, timed


def scripted(values):
    it = iter(values)
    return lambda: next(it)


def test_rounds_interleave_the_callables_in_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name) or 1.0) for name in ("teacher", "student")}
    times = paired_times(fns, rounds=3, warmup=1)
    assert calls == ["teacher", "student"] * 4  # one warm-up call each, then three interleaved rounds
    assert times == {"teacher": [1.0] * 3, "student": [1.0] * 3}


def test_ratio_is_the_median_of_per_round_ratios():
    # the machine runs 1x, 3x, 2x slower in the three rounds: per-round ratios are all 10
    times = paired_times({"teacher": scripted([0.0, 10.0, 30.0, 20.0]),
                          "student": scripted([0.0, 1.0, 3.0, 2.0])}, rounds=3)
    assert times == {"teacher": [10.0, 30.0, 20.0], "student": [1.0, 3.0, 2.0]}
    assert paired_ratio(times["teacher"], times["student"]) == 10.0
    # per-round ratios 10, 20, 10: median 10, where the ratio of the two medians would be 30 / 2 = 15
    assert paired_ratio([10.0, 40.0, 30.0], [1.0, 2.0, 3.0]) == 10.0


def test_timed_returns_the_seconds_between_its_two_clock_reads(monkeypatch):
    clock = iter([100.0, 102.5])
    monkeypatch.setattr("unidistill.metrics.time.perf_counter", lambda: next(clock))
    ran = []
    assert timed(lambda: ran.append(1))() == 2.5
    assert ran == [1]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        paired_times({"a": lambda: 1.0}, rounds=0)
    with pytest.raises(ValueError, match="equally long"):
        paired_ratio([1.0], [1.0, 2.0])
