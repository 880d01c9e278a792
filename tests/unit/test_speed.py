"""quantflow.speed.measure: the round protocol itself (which runner runs in which round, when it stops),
driven by an engine whose rates follow a known machine: every figure of a round scales with that round's
speed, as a slow or fast spell scales everything measured back to back."""

from __future__ import annotations

import itertools

from quantflow import speed

CFG = {"warmup": 1, "repetitions": 3, "curve_rounds": 5, "max_repetitions": 12, "target_ci": 0.04,
       "gen_tokens": 8, "prompt_tokens": 4, "max_answer_tokens": 2, "n_ctx": 32}
# the machine's speed round after round: swings of +-30 %, far outside any +-4 % target
SPELLS = [1.0, 0.7, 1.3, 0.8, 1.25, 0.75, 1.2, 0.9, 1.1, 0.7, 1.3, 1.0, 0.8]


def run(paired: bool, cfg=CFG):
    spell = itertools.cycle(SPELLS)
    state = {"now": 1.0, "seen": set()}
    calls = {"extra": 0}

    def tick(name):  # a new spell once both sides of the pair have run in the current one
        if name in state["seen"]:
            state["now"], state["seen"] = next(spell), set()
        state["seen"].add(name)

    def decode(model, prompt, n):
        tick("ours")
        return 1000.0 * state["now"], 100.0 * state["now"]

    def f16(model):
        tick("f16")
        return {"f16_decode_tps": 50.0 * state["now"]}  # exactly half our rate in the same spell

    def extra(model):
        calls["extra"] += 1
        return {"engine_tg_tps": 105.0 * state["now"]}

    sp, _, rounds = speed.measure(
        load=lambda: object(), decode=decode, answer=lambda m, ids, k: (0.01, 0.02),
        encode=lambda m, item: [1, 2], cfg=cfg, threads=1, prompt=[1, 2, 3, 4], suite=[{"prompt": "x"}],
        companions=[f16], extras=[extra], paired="f16_decode_tps" if paired else None, gpu=False,
    )
    return sp, rounds, calls["extra"]


def test_paired_rounds_stop_once_the_ratio_is_certain_not_the_noisy_rate():
    # the speedup is 2.0 in every round: its CI is exact as soon as the extras have had their rounds
    sp, rounds, n_extra = run(paired=True)
    assert sp["rounds"] == CFG["curve_rounds"] and len(rounds["f16_decode_tps"]) == CFG["curve_rounds"]
    assert {a / b for a, b in zip(rounds["decode_tps"], rounds["f16_decode_tps"], strict=True)} == {2.0}
    assert len(rounds["engine_tg_tps"]) == CFG["curve_rounds"]
    assert n_extra == CFG["warmup"] + CFG["curve_rounds"]  # the warm-up round runs every runner once too


def test_without_a_pair_the_rate_itself_must_converge():
    # the decode median never gets within +-4 % on this machine: every round up to the cap runs, and the
    # extras only in the first curve_rounds of them
    sp, rounds, _ = run(paired=False)
    assert sp["rounds"] == CFG["max_repetitions"]
    assert len(rounds["engine_tg_tps"]) == CFG["curve_rounds"]
    assert len(rounds["f16_decode_tps"]) == CFG["max_repetitions"]
