"""Filtered searches still page like MLflow: full pages until the end, valid page tokens, nothing lost or repeated."""
from __future__ import annotations

import pytest

from tests.integration.gate_it import ALICE, BOB, ROOT, denied, search_pages, uid

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


# --- a caller reading several prefixes: the admin's listing cut to readable names, in order, page by page -------

SEARCHER = "searcher@corp.test"
# Besides `shared/` (everyone's), the searcher reads prefixes with LIKE wildcards, a quote and a backslash in them,
# a prefix inside another one, and its personal area; nothing else. The decoys match the upstream's LIKE (SQLite's
# is case-insensitive, `_` and `%` match anything, the pattern stops before a backslash) but not the prefixes.
GRANT = {"to": [SEARCHER], "permission": "read",
         "experiments": ["alpha/", "alpha/public/", "o'q_%/", "users/{user}/", "back\\slash/"],
         "models": ["alpha-", "a_b-", "o'q_%-", "back\\slash-"]}
EXP_PREFIXES = ("alpha/", "shared/", "o'q_%/", f"users/{SEARCHER}/", "back\\slash/")
EXP_DECOYS = ("beta/", "alphabet/", "ALPHA/", "O'Q_%/", "o'qX%/", "o'q_%x/", "users/other@corp.test/", "back/slash/")
MODEL_PREFIXES = ("alpha-", "shared-", "a_b-", "o'q_%-", "back\\slash-")
MODEL_DECOYS = ("beta-", "alphabet-", "ALPHA-", "aXb-", "O'Q_%-", "o'qX%-", "backXslash-")
PROMPT_PREFIXES = ("alpha-", "shared-", "a_b-")          # prompt names: letters, digits, `-`, `_`, `.`
PROMPT_DECOYS = ("beta-", "alphabet-", "ALPHA-", "aXb-")


def metric(gate, name: str) -> float:  # type: ignore[no-untyped-def]
    import httpx

    text = httpx.get(gate.url + "/_gate/metrics", headers={"Authorization": f"Bearer {gate.token(ROOT)}"},
                     timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def lookups(gate) -> float:  # type: ignore[no-untyped-def]
    return metric(gate, 'mlflow_gate_upstream_seconds_count{kind="lookup"}')


@pytest.fixture(scope="module")
def searcher(gate):  # type: ignore[no-untyped-def]
    """The gate's policy with GRANT added (the gate reloads it within a second), and the searcher's client."""
    import time

    import yaml

    original = gate.policy_path.read_text()
    policy = yaml.safe_load(original)
    policy.setdefault("grants", []).append(GRANT)
    gate.policy_path.write_text(yaml.safe_dump(policy))
    client, probe = gate.client(SEARCHER), f"o'q_%/probe-{uid()}"
    gate.client(ROOT).create_experiment(probe)
    try:
        deadline = time.monotonic() + 15
        while probe not in [e.name for e in client.search_experiments(filter_string="name LIKE '%probe-%'")]:
            assert time.monotonic() < deadline, "the gate did not take the policy with the searcher's grant"
            time.sleep(0.2)
        yield client
    finally:
        gate.policy_path.write_text(original)


@pytest.fixture(scope="module")
def objects(gate, world, searcher):  # type: ignore[no-untyped-def]
    """Experiments, registered models, versions and prompts under every readable prefix and every decoy, created
    interleaved by the admin; a few experiments deleted."""
    root, n = gate.client(ROOT), uid()
    exps = [root.create_experiment(f"{head}s-{n}-{i}") for i in range(5) for head in EXP_PREFIXES + EXP_DECOYS]
    for exp_id in exps[::7]:
        root.delete_experiment(exp_id)
    for i in range(4):                      # no decoys: what a first page costs when the LIKE is exact
        for head in EXP_PREFIXES:
            root.create_experiment(f"{head}c-{n}-{i}")
    source = f"{root.get_run(world.alpha_run).info.artifact_uri}/notes"
    for i in range(3):
        for head in MODEL_PREFIXES + MODEL_DECOYS:
            name = root.create_registered_model(f"{head}m-{n}-{i}").name
            for _ in range(i % 2 + 1):
                root.create_model_version(name, source, run_id=world.alpha_run)
    import mlflow

    with root.acting():
        for i in range(2):
            for head in PROMPT_PREFIXES + PROMPT_DECOYS:
                mlflow.genai.register_prompt(name=f"{head}p-{n}-{i}", template="Hello {{x}}")
    return n


def admin_listing(search, **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
    return [x.name for page in pages_of(search, 1000, **kwargs) for x in page]


ORDERS = [None, ["name ASC"], ["name DESC"], ["last_update_time DESC"], ["creation_time ASC", "name DESC"]]


@pytest.mark.parametrize("order_by", ORDERS)
@pytest.mark.parametrize("size", [3, 1000])
def test_experiments_of_several_prefixes_merge_exactly(gate, searcher, objects, order_by, size):
    flt = f"name LIKE '%s-{objects}-%'"
    expected = [x for x in admin_listing(gate.client(ROOT).search_experiments, filter_string=flt, order_by=order_by)
                if x.startswith(EXP_PREFIXES)]
    assert len(expected) >= 15
    pages = pages_of(searcher.search_experiments, size, filter_string=flt, order_by=order_by)
    assert_full_pages(pages, size)
    assert [e.name for page in pages for e in page] == expected


@pytest.mark.parametrize("view", ["deleted_only", "all"])
def test_deleted_and_all_view_types_merge_exactly(gate, searcher, objects, view):
    from mlflow.entities import ViewType

    flt, view_type = f"name LIKE '%s-{objects}-%'", ViewType.from_string(view)
    expected = [x for x in admin_listing(gate.client(ROOT).search_experiments, filter_string=flt, view_type=view_type)
                if x.startswith(EXP_PREFIXES)]
    assert expected
    pages = pages_of(searcher.search_experiments, 2, filter_string=flt, view_type=view_type)
    assert_full_pages(pages, 2)
    assert [e.name for page in pages for e in page] == expected


def test_whole_listing_without_a_filter_one_item_per_page(gate, searcher, objects):
    expected = [x for x in admin_listing(gate.client(ROOT).search_experiments) if x.startswith(EXP_PREFIXES)]
    pages = [list(page) for page in search_pages(searcher.search_experiments, max_results=1)]
    assert all(len(page) == 1 for page in pages)
    assert [e.name for page in pages for e in page] == expected


@pytest.mark.parametrize("flt", ["name LIKE 'alpha/s-{n}-%'", "name = 'shared/s-{n}-3'", "name ILIKE 'USERS/%s-{n}-%'"])
def test_a_filter_naming_a_prefix_asks_only_that_prefix(gate, searcher, objects, flt):
    flt = flt.format(n=objects)
    expected = [x for x in admin_listing(gate.client(ROOT).search_experiments, filter_string=flt)
                if x.startswith(EXP_PREFIXES)]
    assert expected
    before = lookups(gate)
    assert [e.name for page in pages_of(searcher.search_experiments, 1000, filter_string=flt) for e in page] == expected
    assert lookups(gate) - before == 1


def test_a_first_page_costs_at_most_one_upstream_search_per_prefix(gate, searcher, objects):
    before = lookups(gate)
    page = searcher.search_experiments(max_results=10, filter_string=f"name LIKE '%c-{objects}-%'")
    assert len(page) == 10 and page.token
    assert lookups(gate) - before <= len(EXP_PREFIXES)


@pytest.mark.parametrize("order_by", [None, ["name DESC"], ["last_updated_timestamp DESC"]])
@pytest.mark.parametrize("size", [2, 1000])
def test_registered_models_of_several_prefixes_merge_exactly(gate, searcher, objects, order_by, size):
    flt = f"name LIKE '%m-{objects}-%'"
    expected = [x for x in admin_listing(gate.client(ROOT).search_registered_models, filter_string=flt,
                                         order_by=order_by) if x.startswith(MODEL_PREFIXES)]
    assert len(expected) == 3 * len(MODEL_PREFIXES)
    pages = pages_of(searcher.search_registered_models, size, filter_string=flt, order_by=order_by)
    assert_full_pages(pages, size)
    assert [m.name for page in pages for m in page] == expected


@pytest.mark.parametrize("order_by", [None, ["name ASC", "version_number ASC"]])
def test_model_versions_of_several_prefixes_merge_exactly(gate, searcher, objects, order_by):
    flt = f"name LIKE '%m-{objects}-%'"
    root = gate.client(ROOT)
    expected = [(v.name, v.version) for page in pages_of(root.search_model_versions, 1000, filter_string=flt,
                                                          order_by=order_by)
                for v in page if v.name.startswith(MODEL_PREFIXES)]
    assert len(expected) == 4 * len(MODEL_PREFIXES)
    pages = pages_of(searcher.search_model_versions, 3, filter_string=flt, order_by=order_by)
    assert_full_pages(pages, 3)
    assert [(v.name, v.version) for page in pages for v in page] == expected


def test_prompts_of_several_prefixes_merge_exactly(gate, searcher, objects):
    flt = f"name LIKE '%p-{objects}-%'"
    root = gate.client(ROOT)
    expected = [p.name for page in pages_of(root.search_prompts, 1000, filter_string=flt) for p in page
                if p.name.startswith(PROMPT_PREFIXES)]
    assert len(expected) == 2 * len(PROMPT_PREFIXES)
    pages = pages_of(searcher.search_prompts, 3, filter_string=flt)
    assert [p.name for page in pages for p in page] == expected
    assert not {p.name for page in pages_of(searcher.search_registered_models, 1000, filter_string=flt) for p in page}


def test_runs_of_many_experiments_cost_one_lookup(gate, world):
    alice, n = gate.client(ALICE), uid()
    ids = [alice.create_experiment(f"alpha/many-{n}-{i}") for i in range(30)]
    run_ids = {alice.create_run(exp).info.run_id for exp in ids[::10]}
    before = lookups(gate)
    found = {r.info.run_id for r in alice.search_runs([*ids, world.shared_exp], max_results=100)}
    assert run_ids <= found
    assert lookups(gate) - before <= 2            # one batch of names (and never one per experiment)
    with denied():                                 # one unreadable id among them: refused as before
        alice.search_runs([*ids, world.beta_exp])
