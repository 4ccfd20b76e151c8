"""The verdict's two answers side by side: given the data each batch size's budget gave it, and
at the baseline's data (`tuner.analysis.equal_data`), each saying what it compared."""

from __future__ import annotations

import pandas as pd

from search_spaces.checks import EQUAL_DATA_SLACK
from tuner.analysis.accuracy import NO_INTERVAL, UNSTABLE
from tuner.analysis.frontier import DegradationMap
from tuner.report.format import (
    batch_list,
    count,
    diff_text,
    finite,
    markdown_table,
    num,
    text,
    value_text,
)


def amount(value: float) -> str:
    """A count of epochs or a data ratio, as a reader says it: 0.8, 3.2, 13, 102."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"


def _data(m: DegradationMap, row: pd.Series) -> str:
    """'150 steps, 53 epochs' (a language model: '..., 1.2M tokens')."""
    text = f"{int(row['steps_judged'])} steps"
    if finite(row.get("epochs_judged")):
        text += f", {amount(row['epochs_judged'])} epochs"
    if m.tokens_per_example and finite(row.get("examples_judged")):
        text += f", {num(row['examples_judged'] * m.tokens_per_example, 3)} tokens"
    return text


def data_verdict(m: DegradationMap) -> list[str]:
    """What data the answer above compared, and the answer at the baseline's data."""
    if m.baseline is None or "data_ratio" not in m.frontier:
        return []
    frontier = m.frontier.set_index("batch_size")
    measured = frontier[frontier["status"].notna()]
    base_batch = m.baseline[0]
    if len(measured) < 2 or not finite(frontier.loc[base_batch, "steps_judged"]):
        return []
    base_data = _data(m, frontier.loc[base_batch])
    more = measured[measured["data_ratio"] > 1 + EQUAL_DATA_SLACK]
    if more.empty:
        return [
            f"Every batch size was judged at the baseline's data ({base_data} at batch "
            f"{base_batch}): the answer above is the answer at equal data."
        ]
    judged = "; ".join(
        f"{int(b)} at {_data(m, row)}, {amount(row['data_ratio'])}x" for b, row in more.iterrows()
    )
    lines = [
        f"The answer above is given more data: each batch size was judged at the data its budget "
        f"and checks gave it, against the baseline's {base_data}: batch {judged} the "
        f"baseline's examples{_one_sided(measured, base_batch)}."
    ]
    return lines + _equal_data_answer(m, frontier, base_data)


def _one_sided(measured: pd.DataFrame, base_batch: int) -> str:
    """Say where the checks gave a batch size more steps than its budget, and whether the
    baseline was given the same multiple of its own (the study runs it there before it
    compares: `checks.budget_check`) or, in a study that ended first or was made before that,
    compared at its own budget (issue 32)."""
    judged = pd.to_numeric(measured.get("judged_steps"), errors="coerce")
    longer = measured[judged > pd.to_numeric(measured["budget_steps"], errors="coerce")]
    longer = longer[longer.index != base_batch]
    if longer.empty:
        return ""
    multiple = pd.to_numeric(longer.get("baseline_multiple"), errors="coerce")
    ratio = pd.to_numeric(longer["judged_steps"], errors="coerce") / pd.to_numeric(
        longer["budget_steps"], errors="coerce"
    )
    same = longer[(multiple > 1) & ((multiple - ratio).abs() < 1e-9)]
    short = longer.drop(index=same.index)
    parts = []
    if len(same):
        parts.append(
            f"the checks gave batch {batch_list(same.index.astype(int).tolist())} more steps "
            f"than its budget, and the baseline the same multiple of its own before they were "
            f"compared"
        )
    if len(short):
        smaller = (multiple.loc[short.index] > 1).any()
        where = "a smaller multiple" if smaller else "its own budget"
        parts.append(
            f"the checks gave batch {batch_list(short.index.astype(int).tolist())} more steps "
            f"than its budget and the baseline not as many, so the baseline, which may gain "
            f"from more steps too, was compared at {where}"
        )
    return "; " + "; ".join(parts)


def _lr(row: pd.Series) -> str:
    factor = row.get("equal_data_lr_factor")
    if not (finite(factor) and factor != 1):
        return ""
    fresh = " (fresh seeds)" if row.get("equal_data_fresh") is True else ""
    return f" and its lr x{num(factor, 2)}{fresh}"


def _equal_data_answer(m: DegradationMap, frontier: pd.DataFrame, base_data: str) -> list[str]:
    metric, base_batch = m.metric, m.baseline[0]
    tol = diff_text(metric, m.tolerance)
    others = frontier[frontier.index != base_batch]
    status = others["equal_data_status"]
    if status.isna().all():
        return [
            f"At equal data ({base_data}) nothing was measured: the equal-data runs come with "
            f"the checks (--no-checks turns them off)."
        ]
    holds = m.holds_up_to_equal_data
    how = (
        f"each batch size's confirmed configuration run again with the confirmation seeds for "
        f"the baseline's {base_data}, at half and twice its lr while one gained more than {tol}, "
        f"as the baseline's lr was checked, and where that moved its lr, the lr it chose run "
        f"again with fresh seeds"
    )
    if holds is None or holds == base_batch:
        opening = f"At equal data ({how}), {metric.noun} is not shown to hold within {tol} "
        opening += f"beyond batch {base_batch}"
    else:
        opening = f"At equal data ({how}), {metric.noun} holds within {tol} up to batch {holds}"
    parts = []
    for label, key in (
        ("degraded", "degraded"),
        ("unstable (a run diverged)", UNSTABLE),
        ("unresolved", "unresolved"),
        ("no interval (one run)", NO_INTERVAL),
    ):
        rows = others[status == key]
        if len(rows):
            values = ", ".join(
                f"{int(b)}: {value_text(metric, r['equal_data_accuracy'])} at "
                f"{int(r['equal_data_steps'])} steps{_lr(r)}, {metric.worse} "
                f"{diff_text(metric, r['equal_data_drop'])}"
                for b, r in rows.iterrows()
            )
            parts.append(f"{label} at batch {values}")
    missing = others[status.isna() & others["status"].notna()].index.astype(int).tolist()
    if missing:
        parts.append(f"not measured at batch {batch_list(missing)}")
    return [opening + ("; " + "; ".join(parts) if parts else "") + "."]


def data_table(m: DegradationMap) -> list[str]:
    """The report's section: per batch size, the data it was judged at and both answers."""
    if m.baseline is None or "data_ratio" not in m.frontier or m.frontier.empty:
        return []
    value = lambda v: value_text(m.metric, v)  # noqa: E731
    diff = lambda v: diff_text(m.metric, v)  # noqa: E731
    return [
        "## Two answers: given more data, and at equal data",
        "",
        "Judged = the level each batch size's verdict rests on (its checks' steps, else its "
        "budget); data = its examples over the baseline's. At equal data, its confirmed "
        "configuration ran again with the confirmation seeds for the baseline's examples, "
        "at half and twice its lr while one gained more than the tolerance, judged where "
        "that moved its lr by the lr it chose run again with fresh seeds (a batch size "
        "whose budget already saw them is its own answer).",
        "",
        markdown_table(
            m.frontier,
            [
                ("batch_size", "batch", count),
                ("steps_judged", "steps judged", count),
                ("epochs_judged", "epochs judged", lambda v: amount(v) if finite(v) else "-"),
                ("data_ratio", "data vs baseline", lambda v: f"{amount(v)}x" if finite(v) else "-"),
                ("status", "given more data", text),
                ("equal_data_steps", "equal-data steps", count),
                ("equal_data_accuracy", f"equal-data {m.metric.noun}", value),
                ("equal_data_drop", f"equal-data {m.metric.worse}", diff),
                ("equal_data_status", "at equal data", text),
            ],
        ),
        "",
    ]
