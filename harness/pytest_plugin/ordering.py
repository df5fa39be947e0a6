"""Which gate tests run, and in what order: each (model, recipe) case's tests together, so its session and engine
start once; a test its case's config has nothing for is deselected."""
from __future__ import annotations

import pytest


class CaseOrdering:
    @pytest.hookimpl(trylast=True)  # after pytest's own fixture-based reordering
    def pytest_collection_modifyitems(self, items):
        group_by_case(items)


def case_of(item):
    return getattr(getattr(item, "callspec", None), "params", {}).get("harness_case")


def group_by_case(items) -> None:
    """Run each case's tests together (file order kept within a case), so its session and engine start once."""
    positions = [n for n, i in enumerate(items) if case_of(i) is not None]
    if not positions:
        return
    order: dict[int, int] = {}
    for n in positions:
        order.setdefault(id(case_of(items[n])), len(order))
    rank = {id(items[n]): k for k, n in enumerate(positions)}
    grouped = sorted((items[n] for n in positions),
                     key=lambda i: (order[id(case_of(i))], i.location[0], i.location[1] or 0, rank[id(i)]))
    for n, item in zip(positions, grouped):
        items[n] = item


def not_for_case(item) -> bool:
    """A (case, dataset) pair the case's config lacks, or a distribution test of a config without distributions."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    case = params.get("harness_case")
    if case is None:
        return False
    if item.get_closest_marker("harness_distributions") and case.cfg.distributions is None:
        return True
    if item.get_closest_marker("harness_recipe_regression") and case.cfg.recipe_regression is None:
        return True
    if "harness_task" in params and params["harness_task"] not in case.cfg.tasks:
        return True  # a task this case's config lacks (None: no case has tasks)
    return "harness_dataset" in params and params["harness_dataset"] not in case.cfg.datasets
