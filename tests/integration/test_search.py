"""Filtered searches still page like MLflow: full pages until the end, valid page tokens, nothing lost or repeated."""
from __future__ import annotations

import pytest

from tests.integration.gate_it import ALICE, BOB, ROOT, search_pages, uid

pytestmark = pytest.mark.integration


def pages_of(search, max_results: int, **kwargs) -> list[list]:  # type: ignore[no-untyped-def]
    pages: list[list] = []
    for page in search_pages(search, max_results=max_results, **kwargs):
        assert len(pages) < 100, "page tokens never end"
        pages.append(list(page))
    return pages


def assert_full_pages(pages: list[list], size: int) -> None:
    sizes = [len(p) for p in pages]
    assert all(s == size for s in sizes[:-1]), f"a page before the last is not full: {sizes}"
    assert sizes[-1] <= size, sizes
    assert sizes[-1] > 0 or len(pages) == 1, f"an empty last page after a page token: {sizes}"


def test_experiment_search_pages_fill_up(gate):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    n = uid()
    alpha_names = []
    for i in range(12):  # interleaved, so every raw page of MLflow's answer mixes both teams
        bob.create_experiment(f"beta/page-{n}-{i:02}")
        alpha_names.append(f"alpha/page-{n}-{i:02}")
        alice.create_experiment(alpha_names[-1])

    pages = pages_of(alice.search_experiments, 5, filter_string=f"name LIKE '%page-{n}-%'")
    assert_full_pages(pages, 5)
    names = [e.name for page in pages for e in page]
    assert sorted(names) == alpha_names, names  # all of alice's, none of bob's, none twice

    # Unfiltered and ordered: the same sequence as the admin's view restricted to what alice may read.
    order = ["name ASC"]
    everything = [e.name for page in pages_of(gate.client(ROOT).search_experiments, 50, order_by=order)
                  for e in page]
    readable = [name for name in everything if name.startswith(("alpha/", "shared/"))]
    pages = pages_of(alice.search_experiments, 5, order_by=order)
    assert_full_pages(pages, 5)
    assert [e.name for page in pages for e in page] == readable


def test_registered_model_search_pages_fill_up(gate):
    alice, bob = gate.client(ALICE), gate.client(BOB)
    n = uid()
    alpha_names = []
    for i in range(7):
        bob.create_registered_model(f"beta-page-{n}-{i:02}")
        alpha_names.append(f"alpha-page-{n}-{i:02}")
        alice.create_registered_model(alpha_names[-1])
    pages = pages_of(alice.search_registered_models, 3, filter_string=f"name LIKE '%page-{n}-%'",
                     order_by=["name ASC"])
    assert_full_pages(pages, 3)
    assert [m.name for page in pages for m in page] == alpha_names


def test_run_search_pages_fill_up(gate, world):
    alice = gate.client(ALICE)
    exp = alice.create_experiment(f"alpha/run-pages-{uid()}")
    run_ids = {alice.create_run(exp).info.run_id for _ in range(7)}
    pages = pages_of(lambda **kw: alice.search_runs([exp, world.shared_exp], **kw), 3,
                     filter_string="attributes.status = 'RUNNING'")
    assert_full_pages(pages, 3)
    found = [r.info.run_id for page in pages for r in page]
    assert len(found) == len(set(found))
    assert run_ids <= set(found)
