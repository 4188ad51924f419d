"""The mutation check's machinery (tests/support/mutations.py): a mutation applied to a copy of the package is seen
by the tests it names, the unmutated copy passes them, the real files are never touched, and a stale mutation is an
error rather than a silent survivor."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from support.mutation_list import MUTATIONS
from support.mutations import ROOT, apply, copy_package, run_mutation

NODE = "tests/unit/test_formulas_distribution.py::test_dmd_gradient_is_the_guided_score_difference_over_the_normaliser"


def test_a_formula_mutation_is_killed_and_its_no_op_survives():
    (flip,) = [m for m in MUTATIONS if m.description == "DMD: direction sign"]
    source = (ROOT / flip.file).read_text()
    killed = run_mutation(replace(flip, tests=(NODE,)))
    assert killed.killed, killed.detail
    survived = run_mutation(replace(flip, replacement=flip.original, tests=(NODE,)))
    assert not survived.killed, survived.detail  # the copy itself passes: only the mutation kills
    assert (ROOT / flip.file).read_text() == source


def test_every_mutation_applies_to_exactly_one_place(tmp_path: Path):
    copy = copy_package(tmp_path)
    for m in MUTATIONS:
        assert (copy / m.file).read_text().count(m.original) == 1, m.description
        assert m.replacement != m.original and m.tests, m.description
    stale = replace(MUTATIONS[0], original="this text is in no file")
    with pytest.raises(ValueError, match="occurs 0 times"):
        apply(copy, stale)
    assert len(MUTATIONS) >= 30 and len({m.description for m in MUTATIONS}) == len(MUTATIONS)
