"""Deterministic generator of the embedded demo's data.

No hub is reachable, so the demo builds its own world: invented countries and creatures, small
arithmetic, lists to count, comparisons and one-line programs. The pretraining corpus states these
facts in prose; the instruction set asks about them as ``Question: ...\\nAnswer:`` pairs, a format the
corpus never shows. The base model therefore knows the facts but not the format, and the fine-tune
has something visible to teach. Every answer is checkable (exact string or number).

Everything derives from one seed through ``random.Random`` streams, so the same seed gives
byte-identical files on every machine.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic

log = logging.getLogger(__name__)

CATEGORIES = ("lookup", "math", "word_problem", "code", "reasoning", "counting", "explanation")
SYLLABLES = "ka lo mi ne ru sa ti vo ze bra dor fel gan hul jor kel mar nis pol quen rim sol tar vel".split()
KINDS = ("bird", "fish", "tree", "stone", "tool", "boat", "song", "dance")
PEOPLE = "Ada Ben Cleo Dan Eva Finn Gus Hana Ivo Jun Kai Lea Max Nia Omar Pia".split()
NAMES_FOR_ITEMS = "apple pear plum cup pen key box hat".split()
NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()


@dataclass(frozen=True)
class World:
    """The invented facts the corpus teaches and the questions test."""

    capitals: dict[str, str] = field(default_factory=dict)  # country -> capital
    kinds: dict[str, str] = field(default_factory=dict)  # creature -> kind


def _name(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(n)).capitalize()


def make_world(seed: int, n_countries: int, n_creatures: int) -> World:
    rng = random.Random(f"world-{seed}")
    used: set[str] = set()

    def fresh(n: int) -> str:
        while True:
            s = _name(rng, n)
            if s not in used:
                used.add(s)
                return s

    capitals = {fresh(3): fresh(2) for _ in range(n_countries)}
    kinds = {fresh(2).lower(): rng.choice(KINDS) for _ in range(n_creatures)}
    return World(capitals=capitals, kinds=kinds)


# --- one generator per category: each returns (prose sentence, question, answer, checker) ---------


def _lookup(rng: random.Random, w: World, keys: list[str]):
    c = rng.choice(keys)
    cap = w.capitals[c]
    prose = rng.choice(
        [f"The capital of {c} is {cap}.", f"{cap} is the capital of {c}.", f"In {c}, the capital city is {cap}."]
    )
    return prose, f"What is the capital of {c}?", cap, "exact"


def _explanation(rng: random.Random, w: World, keys: list[str]):
    c = rng.choice(keys)
    k = w.kinds[c]
    prose = rng.choice([f"A {c} is a kind of {k}.", f"The {c} is a {k}.", f"Every {c} is a {k}."])
    return prose, f"What kind of thing is a {c}?", k, "exact"


def _math(rng: random.Random, w: World, keys: list[str]):
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.6:
        prose = rng.choice([f"{a} plus {b} is {a + b}.", f"{a} + {b} = {a + b}."])
        return prose, f"What is {a} plus {b}?", str(a + b), "numeric"
    a, b = max(a, b), min(a, b)
    prose = rng.choice([f"{a} minus {b} is {a - b}.", f"{a} - {b} = {a - b}."])
    return prose, f"What is {a} minus {b}?", str(a - b), "numeric"


def _word_problem(rng: random.Random, w: World, keys: list[str]):
    p, item = rng.choice(PEOPLE), rng.choice(NAMES_FOR_ITEMS)
    a, b = rng.randint(1, 5), rng.randint(1, 4)
    prose = f"{p} had {a} {item}s and got {b} more, so {p} had {a + b} {item}s."
    q = f"{p} has {a} {item}s and gets {b} more. How many {item}s does {p} have?"
    return prose, q, str(a + b), "numeric"


def _code(rng: random.Random, w: World, keys: list[str]):
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    op, val = rng.choice([("+", a + b), ("*", a * b)]) if a * b < 30 else ("+", a + b)
    prose = f"The code print({a} {op} {b}) prints {val}."
    return prose, f"What does print({a} {op} {b}) print?", str(val), "numeric"


def _reasoning(rng: random.Random, w: World, keys: list[str]):
    x, y = rng.sample(PEOPLE, 2)
    adj, opp = rng.choice([("taller", "shorter"), ("older", "younger"), ("faster", "slower")])
    prose = f"{x} is {adj} than {y}, so {y} is {opp} than {x}."
    q = f"{x} is {adj} than {y}. Who is {opp}?"
    return prose, q, y, "exact"


def _counting(rng: random.Random, w: World, keys: list[str]):
    n = rng.randint(1, 6)
    items = " ".join(rng.choice(NAMES_FOR_ITEMS) for _ in range(n))
    prose = f"The list {items} has {n} items."
    return prose, f"How many items are in the list {items}?", str(n), "numeric"


GENERATORS = {
    "lookup": _lookup,
    "math": _math,
    "word_problem": _word_problem,
    "code": _code,
    "reasoning": _reasoning,
    "counting": _counting,
    "explanation": _explanation,
}


def format_prompt(question: str) -> str:
    """The instruction format taught by the fine-tune (and used for every variant's answers)."""
    return f"Question: {question}\nAnswer:"


def _prose_lines(rng: random.Random, w: World, n: int) -> list[str]:
    """n lines of 3-6 prose sentences each, mixing all categories over all known facts."""
    countries, creatures = list(w.capitals), list(w.kinds)
    lines = []
    for _ in range(n):
        sents = []
        for _ in range(rng.randint(3, 6)):
            cat = rng.choice(CATEGORIES)
            keys = creatures if cat == "explanation" else countries
            sents.append(GENERATORS[cat](rng, w, keys)[0])
        lines.append(" ".join(sents))
    return lines


def _qa_items(rng: random.Random, w: World, n: int, split: str, key_split: dict[str, list[str]]) -> list[dict]:
    """n instruction items, balanced over categories; lookup/explanation keys disjoint per split."""
    items, seen = [], set()
    for i in range(n):
        cat = CATEGORIES[i % len(CATEGORIES)]
        keys = key_split["creatures" if cat == "explanation" else "countries"]
        for _attempt in range(50):  # prefer distinct questions while the space allows
            _, q, a, checker = GENERATORS[cat](rng, w, keys)
            if (q, split) not in seen:
                break
        seen.add((q, split))
        items.append(
            {
                "id": f"{split}-{len(items):04d}",
                "category": cat,
                "prompt": format_prompt(q),
                "completion": f" {a}",
                "answer": a,
                "checker": checker,
            }
        )
    return items


def generate(seed: int, sizes: dict[str, int]) -> dict[str, object]:
    """All demo data as in-memory objects (pure: no I/O).

    sizes keys: countries, creatures, corpus_lines, heldout_lines, calibration_lines,
    sft_train, sft_eval, test, prompts.
    """
    w = make_world(seed, sizes["countries"], sizes["creatures"])
    countries, creatures = list(w.capitals), list(w.kinds)
    # Train questions about the first 75 % of the facts, test questions about the rest: every test
    # fact is in the pretraining corpus, but its question never appears in the fine-tune data.
    cut_c, cut_k = int(len(countries) * 0.75), int(len(creatures) * 0.75)
    train_keys = {"countries": countries[:cut_c], "creatures": creatures[:cut_k]}
    test_keys = {"countries": countries[cut_c:], "creatures": creatures[cut_k:]}
    test = _qa_items(random.Random(f"test-{seed}"), w, sizes["test"], "test", test_keys)
    test_q = {t["prompt"] for t in test}
    train = [
        t
        for t in _qa_items(random.Random(f"sft-{seed}"), w, sizes["sft_train"] * 2, "train", train_keys)
        if t["prompt"] not in test_q
    ][: sizes["sft_train"]]
    eval_ = _qa_items(random.Random(f"eval-{seed}"), w, sizes["sft_eval"], "eval", train_keys)
    prompts = [
        {k: t[k] for k in ("id", "category", "prompt", "answer", "checker")}
        for t in _pick_per_category(test, sizes["prompts"])
    ]
    return {
        "corpus": _prose_lines(random.Random(f"corpus-{seed}"), w, sizes["corpus_lines"]),
        "heldout": _prose_lines(random.Random(f"heldout-{seed}"), w, sizes["heldout_lines"]),
        "calibration": _prose_lines(random.Random(f"calib-{seed}"), w, sizes["calibration_lines"]),
        "sft_train": train,
        "sft_eval": eval_,
        "test": test,
        "prompts": prompts,
    }


def _pick_per_category(items: list[dict], n: int) -> list[dict]:
    """First items round-robin over categories, so a short prompt suite still covers each one."""
    by_cat: dict[str, list[dict]] = {}
    for it in items:
        by_cat.setdefault(it["category"], []).append(it)
    out, depth = [], 0
    while len(out) < min(n, len(items)):
        for cat in CATEGORIES:
            if depth < len(by_cat.get(cat, [])) and len(out) < n:
                out.append(by_cat[cat][depth])
        depth += 1
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, written under a temporary name and moved into place."""
    atomic.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_demo_data(outputs: dict[str, str], seed: int, sizes: dict[str, int]) -> None:
    """Write every file named in ``outputs`` (keys as in :func:`generate`)."""
    data = generate(seed, sizes)
    for key, path in outputs.items():
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if key in ("corpus", "heldout", "calibration"):
            atomic.write_text(p, "\n".join(data[key]) + "\n")
        else:
            write_jsonl(p, data[key])
        log.info("wrote %s (%d rows)", p, len(data[key]))
