"""A stage's weighted multi-task mixture: the seeded sampler's per-source counts follow the weights, the
same seed gives the same order, and a stage trains on several sources with the counts logged."""

from __future__ import annotations

import json
import math

import pytest

from omnifuse.errors import OmnifuseError
from omnifuse.recipe import parse_recipe
from omnifuse.training.loop import train
from omnifuse.training.order import BLOCK, Mixture, sample_order
from tiny import make_parts, tiny_recipe_dict, write_color_dataset

WEIGHTS = [0.5, 0.3, 0.2]


def test_counts_follow_the_weights_within_sampling_tolerance():
    n = 6000
    counts = Mixture(WEIGHTS, seed=0, stage_index=1).counts(n)
    assert sum(counts) == n
    for c, w in zip(counts, WEIGHTS, strict=True):
        sd = math.sqrt(n * w * (1 - w))  # binomial standard deviation
        assert abs(c - n * w) < 4 * sd, (counts, WEIGHTS)


def test_turns_count_each_source_in_order_across_blocks():
    m = Mixture(WEIGHTS, seed=3, stage_index=0)
    seen = [0, 0, 0]
    for p in range(BLOCK + 50):  # crosses a block boundary
        source, turn = m.turn(p)
        assert turn == seen[source]
        seen[source] += 1
    assert seen == m.counts(BLOCK + 50)


def test_same_seed_same_order_other_seed_other_order():
    groups = [list(range(0, 10)), list(range(10, 14)), list(range(14, 30))]
    a = sample_order(30, 0, 1, groups, WEIGHTS)
    b = sample_order(30, 0, 1, groups, WEIGHTS)
    c = sample_order(30, 1, 1, groups, WEIGHTS)
    first = [a(p) for p in range(200)]
    assert first == [b(p) for p in range(200)]
    assert first != [c(p) for p in range(200)]
    # Each source is walked epoch by epoch: its first len(group) draws are a permutation of it.
    from_second = [i for i in first if 10 <= i < 14][:4]
    assert sorted(from_second) == list(range(10, 14))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([], "empty list"),
        ([{"source": "a.jsonl", "weight": 1}, {"source": "a.jsonl", "weight": 2}], "twice"),
        ([{"source": "a.jsonl", "weight": 0}], "greater than 0"),
    ],
)
def test_bad_mixtures_are_refused(tmp_path, data, says):
    raw = tiny_recipe_dict(tmp_path / "d.jsonl")
    raw["stages"][0]["data"] = data
    with pytest.raises(OmnifuseError, match=says):
        parse_recipe(raw)


def test_a_mixture_with_balance_by_is_refused(tmp_path):
    raw = tiny_recipe_dict(tmp_path / "d.jsonl")
    raw["stages"][0]["data"] = [{"source": "a.jsonl", "weight": 1}]
    raw["stages"][0]["balance_by"] = "question_type"
    with pytest.raises(OmnifuseError, match="balance_by"):
        parse_recipe(raw)


def test_a_stage_trains_on_a_weighted_mixture_and_logs_its_counts(tmp_path):
    first, second = write_color_dataset(tmp_path / "a", n=6), write_color_dataset(tmp_path / "b", n=9)
    raw = tiny_recipe_dict(first)
    raw["stages"][0]["data"] = [{"source": str(first), "weight": 3}, {"source": str(second), "weight": 1}]
    train(parse_recipe(raw), tmp_path / "run", parts=make_parts(), progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    stage = raw["stages"][0]
    drawn = records[0]["mixture"]
    expected = Mixture([3, 1], raw["seed"], 0).counts(stage["steps"] * stage["batch_size"])
    assert drawn == {str(first): expected[0], str(second): expected[1]}
    assert all("mixture" not in r for r in records[1:])


def test_a_mixture_under_dp_sgd_is_refused(tmp_path):
    raw = tiny_recipe_dict(tmp_path / "d.jsonl")
    raw["stages"][0]["data"] = [{"source": "a.jsonl", "weight": 1}, {"source": "b.jsonl", "weight": 1}]
    raw["privacy"] = {"noise_multiplier": 1.0, "delta": 1e-5, "max_grad_norm": 1.0}
    with pytest.raises(OmnifuseError, match="Poisson sampling"):
        parse_recipe(raw)
