"""Budgets in steps at every batch size, the evaluation schedule, warmup as a fraction."""

import pytest

from trainables.budget import (
    Budget,
    BudgetError,
    default_eval_every,
    evaluation_steps,
    warmup_steps,
)


@pytest.mark.parametrize(
    "text, min_steps, batch, steps",
    [
        ("epochs:2", 0, 8, 2 * (1438 // 8)),  # full batches only, as trained
        ("epochs:2", 0, 512, 4),
        ("epochs:2", 150, 512, 150),  # the floor: never a handful of steps
        ("epochs:2", 150, 8, 358),  # the floor does not cut a larger budget
        ("epochs:0.5", 0, 32, 22),
        ("steps:300", 0, 8, 300),
        ("steps:300", 0, 512, 300),  # equal steps at every batch size
        ("examples:100000", 0, 512, 195),
        ("examples:100", 0, 512, 1),  # at least one step
    ],
)
def test_a_budget_in_steps(text, min_steps, batch, steps):
    assert Budget.parse(text, min_steps).steps(1438, batch) == steps


@pytest.mark.parametrize(
    "text, message",
    [
        ("300", "write UNIT:AMOUNT"),
        ("weeks:2", "budget unit 'weeks'"),
        ("steps:x", "is not a number"),
        ("steps:2.5", "positive whole number"),
        ("epochs:0", "positive number"),
        ("epochs:inf", "positive number"),
    ],
)
def test_a_bad_budget_is_one_line(text, message):
    with pytest.raises(BudgetError, match=message) as error:
        Budget.parse(text)
    assert "\n" not in str(error.value)


def test_a_budget_says_which_comparison_it_makes():
    assert "equal data" in Budget.parse("epochs:2", 150).describe()
    assert "at least 150 steps" in Budget.parse("epochs:2", 150).describe()
    assert "equal optimizer steps" in Budget.parse("steps:300").describe()
    assert str(Budget.parse("epochs:2", 150)) == "epochs:2 (at least 150 steps)"


def test_evaluations_every_n_steps_and_always_at_the_end():
    assert evaluation_steps(10, 3) == [3, 6, 9, 10]
    assert evaluation_steps(9, 3) == [3, 6, 9]
    assert evaluation_steps(2, 5) == [2]
    assert [default_eval_every(s) for s in (20, 358, 150, 7)] == [1, 18, 8, 1]
    assert len(evaluation_steps(358, default_eval_every(358))) == 20


def test_warmup_is_a_fraction_of_the_budget():
    assert warmup_steps(0.1, 358) == 36
    assert warmup_steps(0.0, 358) == 0
    with pytest.raises(BudgetError):
        warmup_steps(1.0, 10)
