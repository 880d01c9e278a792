"""Property and fuzz tests (hypothesis): the config loader and the metrics functions."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from quantflow import stats
from quantflow.config import ConfigError, load_and_validate

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
TINY = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- config loader: any mutation gives a valid config or exactly one line naming a key -------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["Q4_K_M", "Q4_K", "q8_0", "hf-gptq4", "lora", "local", "hub", "4GB", "0.25s", "15%", "base"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def _paths(obj, prefix=()):
    """Every key path in a config tree (dict keys and list indices)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


ALL_PATHS = [p for p in _paths(TINY) if p]


@st.composite
def mutated_configs(draw):
    cfg = copy.deepcopy(TINY)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = cfg
        try:
            for p in path[:-1]:
                parent = parent[p]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(values)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
            else:
                parent.append(draw(values))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced this path's parent
    return cfg


# A key path as config errors write it: bench.n_ctx, quants[1], models[0]['a key: not plain'], (top level).
_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_PART = rf"[A-Za-z_][\w-]*|\.[A-Za-z_][\w-]*|\[(?:{_QUOTED}|[^'\"\]\s]+)\]"
_KEY_PATH = re.compile(rf"config key (\(top level\)|(?:{_PART})+): ")


@FAST
@given(mutated_configs())
@example({**TINY, "bench": {**TINY["bench"], "a\n b": 1}})  # once drawn at random: an unknown key with a newline
@example({**TINY, "models": [{**TINY["models"][0], "x: y": None}]})
def test_config_mutations_are_valid_or_one_line_naming_a_key(cfg):
    try:
        out = load_and_validate(cfg, SCHEMA, REPO)
    except ConfigError as e:
        msg = str(e)
        assert len(msg.splitlines()) == 1 and _KEY_PATH.match(msg), msg
    else:
        assert isinstance(out, dict) and out["bench"]["n_ctx"] >= out["bench"]["prompt_tokens"]


@FAST
@given(st.sampled_from([p for p in ALL_PATHS if p[0] in ("bench", "report", "demo")]), scalars)
def test_a_wrong_scalar_is_reported_at_its_own_key(path, value):
    cfg = copy.deepcopy(TINY)
    cfg.setdefault("report", {})
    parent = cfg
    for p in path[:-1]:
        parent = parent[p]
    assume(isinstance(parent, dict))
    parent[path[-1]] = value
    try:
        load_and_validate(cfg, SCHEMA, REPO)
    except ConfigError as e:
        assert str(e).startswith("config key "), str(e)


# --- metrics ------------------------------------------------------------------------------------

logit_rows = st.integers(2, 40).flatmap(
    lambda v: st.lists(
        st.lists(st.floats(-30, 30, allow_nan=False, allow_infinity=False), min_size=v, max_size=v),
        min_size=1,
        max_size=6,
    )
)


@FAST
@given(logit_rows, st.data())
def test_kl_is_nonnegative_zero_on_itself_and_topk_is_a_lower_bound(rows, data):
    ref = stats.log_softmax(np.array(rows))
    noise = np.array(data.draw(st.lists(st.floats(-3, 3), min_size=ref.size, max_size=ref.size))).reshape(ref.shape)
    cand = stats.log_softmax(np.array(rows) + noise)
    full = stats.kl_full(ref, cand)
    assert np.all(full >= -1e-9)
    assert np.allclose(stats.kl_full(ref, ref), 0, atol=1e-9)
    k = data.draw(st.integers(1, ref.shape[1]))
    ids, lp, rest = stats.topk_reference(ref, k)
    top = stats.kl_from_topk(ids, lp, rest, cand)
    assert np.all(top >= 0)
    assert np.all(top <= full + 1e-4 + 1e-4 * np.abs(full))  # merging bins never raises KL (float32 log-probs)
    assert np.allclose(stats.kl_from_topk(ids, lp, rest, ref), 0, atol=1e-4)
    if k == ref.shape[1]:
        assert np.allclose(top, full, atol=1e-4, rtol=1e-3)


@FAST
@given(logit_rows)
def test_log_softmax_is_a_distribution_and_shift_invariant(rows):
    x = np.array(rows)
    lp = stats.log_softmax(x)
    assert np.allclose(np.exp(lp).sum(axis=-1), 1.0)
    assert np.all(lp <= 1e-12)
    assert np.allclose(stats.log_softmax(x + 7.5), lp)


measurements = st.lists(st.floats(0.01, 1e4, allow_nan=False), min_size=1, max_size=40)


@FAST
@given(measurements)
def test_median_ci_contains_the_median_within_the_sample(vals):
    lo, hi = stats.median_ci(vals)
    med = float(np.median(vals))
    assert min(vals) <= lo <= med <= hi <= max(vals)
    s = stats.summarize(vals)
    assert s["p10"] <= s["median"] <= s["p90"] and s["cv"] >= 0 and s["n"] == len(vals)
    assert s["ci95"] == [lo, hi]


@FAST
@given(measurements, st.floats(0.01, 100))
def test_convergence_is_scale_free(vals, scale):
    a = stats.converged(vals, 0.03)
    b = stats.converged([v * scale for v in vals], 0.03)
    lo, hi = stats.median_ci(vals)
    med = float(np.median(vals))
    edge = min(abs((med - lo) - 0.03 * med), abs((hi - med) - 0.03 * med))
    assume(edge > 1e-9 * med)  # exactly on the boundary, float rounding may decide either way
    assert a == b


@FAST
@given(st.lists(st.floats(0, 50, allow_nan=False), min_size=1, max_size=200))
def test_distribution_is_ordered(vals):
    d = stats.distribution(np.array(vals))
    assert min(vals) <= d["median"] <= d["p99"] <= d["p999"] <= d["max"] == max(vals)
    assert min(vals) - 1e-9 <= d["mean"] <= max(vals) + 1e-9


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci", reason="free exploration asked for")
def test_property_tests_draw_the_same_examples_on_every_run():
    """The default profile (tests/conftest.py) is derandomized: two runs of a property test see the same examples."""
    seen: list[list[str]] = []

    @FAST
    @given(st.lists(st.text(), max_size=4))
    def probe(xs):
        seen[-1].append(repr(xs))

    for _ in range(2):
        seen.append([])
        probe()
    assert seen[0] == seen[1] and len(set(seen[0])) > 10


def test_summarize_refuses_no_measurements():
    with pytest.raises(ValueError):
        stats.summarize([])
