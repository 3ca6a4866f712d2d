import math
import random
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizer import Tokenizer
from rewards import ALPHABET, MAX_DEPTH, MAX_EXPR_CHARS, TASKS, Problem, canonical, get_task, safe_eval


@pytest.mark.parametrize("expr,value", [
    ("1/3*3", 1), ("2+3*4", 14), ("(2+3)*4", 20), ("8-3-2", 3), ("8/4/2", 1), ("8-(3-2)", 7),
    ("1/3", Fraction(1, 3)), ("7/2-1/2", 3), (" 1 + 2 ", 3), ("0", 0), ("100/7*7", 100),
    ("((((5))))", 5), ("2*3-4/8", Fraction(11, 2)),
])
def test_known_values(expr, value):
    assert safe_eval(expr) == value
    assert isinstance(safe_eval(expr), Fraction)


HOSTILE = [
    "2**3", "9**9**9", "__import__('os')", "1/0", "(1-1)/(2-2)", "(" * 10000 + "1" + ")" * 10000,
    "9" * 10000, "٣", "1+٣", "\x00", "1\x00+2", "1\n+2", "", " ", "(", ")", "1+", "+1", "-1", "1--1",
    "()", "1(2)", "(1)(2)", "1 2", "x", "1e3", "1.5", "0x10", "07", "a" * 10 ** 6, "1+" * 100000 + "1",
    "999999*999999*999999", "1/999999/999999/999999", "\u202e1+2", "１+２", "lambda: 0", "[1]",
    "1" + "+1" * 200,
]


@pytest.mark.parametrize("expr", HOSTILE)
def test_hostile_inputs_never_break_anything(expr):
    """Each hostile input's expected value is None (a power, a name, a unary minus, a leading zero, a
    non-ASCII digit, a value or a length past the bounds...), and no task scores it: make_n and countdown
    need a value, add a reversed sum of digits; the reward is a float in {0, 1} for every task and style."""
    assert safe_eval(expr) is None
    for name in TASKS:
        for style in ("raw", "instruct"):
            task = get_task(name, style=style)
            p = task.sample(random.Random(0))
            for completion in (expr, f"<answer>{expr}</answer>"):
                r = task.reward(p, completion)
                assert isinstance(r, float) and r == 0.0, (name, style, completion[:20])


def test_hostile_inputs_are_rejected():
    for expr in ["2**3", "9**9**9", "__import__('os')", "1/0", "(" * 10000 + "1" + ")" * 10000,
                 "9" * 10000, "٣", "\x00", "", "1\n+2", "-1", "07", "1.5", "１+２",
                 "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1), "1" + "+1" * 200,
                 "999999*999999*999999"]:
        assert safe_eval(expr) is None, expr
    ok = "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
    assert safe_eval(ok) == 1 and len("1+1" * 40) <= MAX_EXPR_CHARS


def test_oversized_inputs_are_refused_before_the_tokenizer():
    """Inputs past MAX_EXPR_CHARS return None without being read (the parser's own work is bounded in
    test_parser_work_is_linear_in_the_input, by counting calls)."""
    for w in ["(" * 10000 + "1" + ")" * 10000, "9" * 10 ** 6, "1+" * 10 ** 5]:
        assert len(w) > MAX_EXPR_CHARS and safe_eval(w) is None


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("style", ["raw", "instruct"])
def test_solutions_score_one_and_wrong_answers_zero(name, style):
    task = get_task(name, style=style)
    rng = random.Random(1)
    for _ in range(30):
        p = task.sample(rng)
        sols = task.solutions(p)
        assert sols and len(set(map(canonical, sols))) == len(sols)
        wrap = (lambda a: a) if style == "raw" else (lambda a: f"Let me think. <answer>{a}</answer>")
        for s in sols:
            assert task.score(p, wrap(s)) == {"reward": 1.0, "format": True, "correct": True, "answer": s}
        for _ in range(20):
            a = task.random_answer(p, rng)
            expected = 1.0 if a in sols else 0.0
            assert task.reward(p, wrap(a)) == expected
            assert task.score(p, wrap(a))["format"]


def test_instruct_last_answer_wins_and_missing_tag_scores_zero():
    task = get_task("make_n", style="instruct")
    p = Problem("", {"n": 7})
    assert task.reward(p, "<answer>9+9</answer> no wait <answer>3+4</answer>") == 1.0
    assert task.reward(p, "<answer>3+4</answer> no wait <answer>9+9</answer>") == 0.0
    assert task.score(p, "3+4") == {"reward": 0.0, "format": False, "correct": False, "answer": None}


def test_make_n_answer_space_is_enumerable():
    task = get_task("make_n")
    space = task.all_answers()
    assert len(space) == 100 and len(set(space)) == 100
    for n in range(5, 14):
        sols = task.solutions(Problem("", {"n": n}))
        assert sols == [f"{a}+{n - a}" for a in range(10) if 0 <= n - a <= 9]
    assert task.reward(Problem("", {"n": 7}), "3+4+0") == 0.0     # the form is d+d


def test_whitespace_the_answer_format_does_not_allow_is_rejected():
    # raw style: the completion is the answer verbatim, so no whitespace anywhere
    make_n, countdown, add = get_task("make_n"), get_task("countdown"), get_task("add")
    p7, p13 = Problem("", {"n": 7}), Problem("", {"n": 13})
    assert make_n.reward(p13, "4+9") == 1.0
    for bad in (" 4+9", "4+9 ", "4 +9", "4+\t9"):
        assert make_n.score(p13, bad) == {"reward": 0.0, "format": False, "correct": False, "answer": bad}
    pc = Problem("", {"numbers": [1, 2, 1, 2], "target": 14})
    assert countdown.reward(pc, "12*1+2") == 0.0            # uses 12, not 1 and 2
    assert countdown.reward(pc, "1 2*1+2") == 0.0
    assert countdown.reward(Problem("", {"numbers": [3, 5, 7], "target": 22}), "3*5 + 7") == 0.0
    p = Problem("", {"a": 12, "b": 30})
    assert add.reward(p, "24 ") == 0.0 and add.reward(p, "24") == 1.0
    # instruct style: the tagged answer is stripped at its ends; spaces between tokens are allowed,
    # never inside a number; an accepted answer comes back in canonical form
    wrap = lambda a: f"<answer>{a}</answer>"
    make_n_i, countdown_i = get_task("make_n", style="instruct"), get_task("countdown", style="instruct")
    assert make_n_i.score(p7, wrap(" 3 + 4 ")) == {"reward": 1.0, "format": True, "correct": True, "answer": "3+4"}
    assert make_n_i.reward(p7, wrap("3\n+4")) == 0.0
    assert countdown_i.reward(Problem("", {"numbers": [3, 5, 7], "target": 22}), wrap(" 3 * 5 + 7 ")) == 1.0
    assert countdown_i.reward(Problem("", {"numbers": [1, 2, 7], "target": 19}), wrap("1 2+7")) == 0.0
    assert countdown_i.reward(Problem("", {"numbers": [12, 7], "target": 19}), wrap("1 2+7")) == 0.0
    assert countdown_i.reward(Problem("", {"numbers": [12, 7], "target": 19}), wrap("12 + 7")) == 1.0


def test_countdown_uses_each_number_exactly_once():
    task = get_task("countdown")
    p = Problem("", {"numbers": [3, 5, 7], "target": 22})
    assert task.reward(p, "3*5+7") == 1.0
    assert task.reward(p, "7+3*5") == 1.0
    assert task.reward(p, "(7+15)") == 0.0          # missing numbers
    assert task.reward(p, "3*5+7+0") == 0.0         # an extra number
    assert task.reward(p, "7*3+1") == 0.0           # wrong multiset
    p2 = Problem("", {"numbers": [2, 2, 5], "target": 9})
    assert task.reward(p2, "2+2+5") == 1.0
    assert task.reward(p2, "2+5+2") == 1.0
    assert task.reward(p2, "4+5") == 0.0            # 2+2 folded: numbers not used
    assert task.reward(p2, "2*2+5") == 1.0
    assert task.reward(p2, "5+2+2+0") == 0.0
    sols = task.solutions(p)
    assert "3*5+7" in sols and "7+3*5" in sols and all(task.reward(p, s) == 1.0 for s in sols)


def test_countdown_problems_always_solvable_and_knobs_work():
    rng = random.Random(2)
    task = get_task("countdown", n_numbers=4, lo=1, hi=6, max_target=30)
    for _ in range(10):
        p = task.sample(rng)
        assert len(p.data["numbers"]) == 4 and all(1 <= x <= 6 for x in p.data["numbers"])
        assert 1 <= p.data["target"] <= 30 and task.solutions(p)


def test_demonstrations_spread_over_correct_answers():
    task = get_task("make_n")
    rng = random.Random(0)
    answers = [a for prompt, a in (task.demo(rng) for _ in range(3000)) if prompt == "N=09:"]
    assert len(answers) > 250 and len(set(answers)) == 10              # every one of the 10 correct answers
    counts = [answers.count(a) for a in set(answers)]
    assert max(counts) < 2 * min(counts)                     # roughly uniform
    demos = [task.demo(rng, noise=0.5) for _ in range(2000)]
    noisy = [task.reward(Problem("", {"n": int(pr[2:4])}), a) for pr, a in demos]
    assert 0.45 < sum(noisy) / len(noisy) < 0.6               # 0.5 correct + 0.5 x (about 8%)


def test_skewed_demonstrations_follow_the_power_law():
    """--warm_skew s: correct answer i of the solution list drawn ∝ (i + 1)^-s; skew 0 draws exactly as
    before (the same stream as the uniform choice)."""
    task = get_task("make_n", targets=(9,))                  # one target: every draw counts
    sols = task.solutions(Problem("", {"n": 9}))
    rng = random.Random(1)
    answers = [a for prompt, a in (task.demo(rng, skew=2.0) for _ in range(5000))]
    assert set(p for p, _ in (task.demo(random.Random(2)) for _ in range(20))) == {"N=09:"}
    weights = [(i + 1) ** -2.0 for i in range(len(sols))]
    for i in (0, 1, 2):
        expected = weights[i] / sum(weights)
        assert abs(answers.count(sols[i]) / len(answers) - expected) < 4 * math.sqrt(expected / len(answers))
    a, b = random.Random(3), random.Random(3)
    assert [task.demo(a, noise=0.5) for _ in range(50)] == [task.demo(b, noise=0.5, skew=0.0) for _ in range(50)]


def test_raw_prompts_and_answers_fit_the_tokenizer():
    tok = Tokenizer.for_chars(ALPHABET)
    rng = random.Random(0)
    for name in TASKS:
        task = get_task(name)
        for _ in range(50):
            prompt, answer = task.demo(rng, noise=0.3)
            assert tok.decode(tok.encode(prompt + answer)) == prompt + answer


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet=ALPHABET, max_size=40), st.sampled_from(sorted(TASKS)), st.sampled_from(["raw", "instruct"]))
def test_fuzz_task_alphabet(text, name, style):
    v = safe_eval(text)
    assert v is None or isinstance(v, Fraction)
    task = get_task(name, style=style)
    p = task.sample(random.Random(len(text)))
    for completion in (text, f"<answer>{text}</answer>"):
        r = task.reward(p, completion)
        assert isinstance(r, float) and r in (0.0, 1.0)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=300), st.sampled_from(sorted(TASKS)))
def test_fuzz_arbitrary_unicode(text, name):
    assert safe_eval(text) is None or isinstance(safe_eval(text), Fraction)
    task = get_task(name, style="instruct")
    p = task.sample(random.Random(0))
    assert 0.0 <= task.reward(p, text) <= 1.0
    assert 0.0 <= get_task(name).reward(p, text) <= 1.0


def test_fuzz_volume():
    """20,000 random strings of the tasks' characters and tag fragments, counted here (not by the tests above):
    every reward is 0 or 1, and some are 1 (the generator does hit correct answers' shapes)."""
    rng = random.Random(0)
    task = get_task("make_n", style="instruct")
    p = task.problem({"n": 5})
    chars = ALPHABET + "<>/answer\n\x00٣"
    rewards, n = [], 0
    for _ in range(20000):
        s = "".join(rng.choice(chars) for _ in range(rng.randint(0, 60)))
        rewards.append(task.reward(p, s))
        n += 1
    assert n == 20000 and set(rewards) <= {0.0, 1.0}
    assert task.reward(p, "<answer>2+3</answer>") == 1.0



def test_worked_demonstrations_score_as_their_answers_and_vary_in_length():
    """The cold start's demonstrations: a worked line, then the tagged answer; the response is scored as
    its answer (correct demonstrations earn the reward, noisy ones only where the random answer is right);
    the phrasings give several lengths; the raw style keeps the answer alone, as demo() draws it."""
    import random
    for name in ("make_n", "add", "countdown"):
        task = get_task(name, style="instruct")
        rng = random.Random(0)
        lengths, wrong = set(), 0
        for noise in (0.0, 1.0):
            for _ in range(60):
                problem, answer = task.demo_answer(rng, noise=noise)
                response = task.worked_response(problem, answer, rng)
                assert response.endswith(f"<answer>{answer}</answer>")
                s = task.score(problem, response)
                assert s["correct"] == task.is_correct(problem.data, answer) == (s["reward"] == 1.0)
                assert s["correct"] or noise == 1.0
                wrong += not s["correct"]
                lengths.add(len(response.split()))
        assert len(lengths) >= 4 and wrong > 0, (name, lengths, wrong)
        raw = get_task(name)
        assert raw.worked_demo(random.Random(0), noise=0.3) == raw.demo(random.Random(0), noise=0.3)


# ---- independent oracles (no call into the task's own is_correct) ----

@pytest.mark.parametrize("n_terms,targets", [(2, range(5, 14)), (3, (0, 1, 14, 27)), (2, (0, 18))])
def test_make_n_solutions_equal_an_arithmetic_enumeration(n_terms, targets):
    """Every way to write N as n_terms single digits, listed by itertools over the digits and summed as
    integers, is make_n's solution list, and nothing else is."""
    import itertools
    task = get_task("make_n", n_terms=n_terms, targets=tuple(targets))
    for n in targets:
        want = {"+".join(map(str, ds)) for ds in itertools.product(range(10), repeat=n_terms) if sum(ds) == n}
        got = task.solutions(task.problem({"n": n}))
        assert set(got) == want and len(got) == len(want)
        assert all(task.reward(task.problem({"n": n}), a) == 1.0 for a in want)


def test_add_answer_is_the_reversed_decimal_sum():
    """add: the only correct raw answer is str(a + b) read backwards, computed here with Python ints."""
    task = get_task("add")
    rng = random.Random(3)
    for _ in range(50):
        p = task.sample(rng)
        a, b = p.data["a"], p.data["b"]
        want = str(a + b)[::-1]
        assert task.solutions(p) == [want]
        assert task.reward(p, want) == 1.0
        assert task.reward(p, str(a + b + 1)[::-1]) == 0.0


def test_parser_work_is_linear_in_the_input():
    """An operation count, not a clock: for inputs that reach the parser (at most MAX_EXPR_CHARS characters),
    the recursive-descent calls stay within a small multiple of the tokens, nesting included."""
    import rewards
    calls = {"n": 0}
    real = {name: getattr(rewards, name) for name in ("_parse_expr", "_parse_term", "_parse_factor")}

    def counted(fn):
        def wrapper(*a):
            calls["n"] += 1
            return fn(*a)
        return wrapper
    inputs = ["(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH, "1+" * 127 + "1", "9*" * 127 + "9", "((" * 60 + "1",
              "(1+(2*(3-(4/5))))" * 14, "1" + "+1" * 120]
    try:
        for name, fn in real.items():
            setattr(rewards, name, counted(fn))
        for w in inputs:
            assert len(w) <= MAX_EXPR_CHARS
            calls["n"] = 0
            safe_eval(w)
            assert 0 < calls["n"] <= 3 * len(w) + 3, (w[:20], calls["n"])
    finally:
        for name, fn in real.items():
            setattr(rewards, name, fn)


@pytest.mark.parametrize("name", ["countdown", "countdown_small", "make_n"])
def test_heldout_prompts_are_never_trained_on(name):
    """With a held-out share, training draws (and the cold start's demonstrations) come only from the training
    split and the eval prompts only from the held-out one, by an independent SHA-256 of the data; the share
    held out is near the one asked for; the eval prompts are distinct and the same for every seed; without a
    share, the draws are the stream they always were."""
    import hashlib
    import json
    from evaluate import eval_problems
    held = lambda d: int(hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16], 16) / 2 ** 64 < 0.25
    task = get_task(name, style="instruct")
    plain = [task.sample(random.Random(7)).data for _ in range(1)] + [task.sample(random.Random(7 + i)).data
                                                                     for i in range(1, 50)]
    draws = [task.make(random.Random(7 + i)) for i in range(50)]
    assert plain == draws                                       # heldout 0: one make() per sample, as before
    share = sum(held(task.make(random.Random(i))) for i in range(4000)) / 4000
    assert 0.18 < share < 0.32 if name != "make_n" else share > 0
    task.heldout = 0.25
    rng = random.Random(1)
    train = [task.sample(rng) for _ in range(300)]
    demos = [task.demo_answer(rng)[0] for _ in range(100)]
    assert not any(held(p.data) for p in train + demos)
    n = 32 if name != "make_n" else None
    evals = eval_problems(task, n or 32, seed=0)
    assert evals and all(held(p.data) for p in evals)
    assert len({p.prompt for p in evals}) == len(evals) == (n or len([t for t in task.targets if held({"n": t})]))
    assert [p.prompt for p in eval_problems(task, n or 32, seed=5)] == [p.prompt for p in evals]


def test_an_empty_split_is_an_error_not_a_hang():
    task = get_task("make_n")
    task.heldout = 0.999999
    with pytest.raises(ValueError, match="split"):
        task.sample(random.Random(0))
    from evaluate import eval_problems
    task = get_task("add", digits=1)                 # 100 prompts, about 25 of them held out
    task.heldout = 0.25
    assert len(eval_problems(task, 20, 0)) == 20
    with pytest.raises(ValueError, match="fewer than 40 distinct prompts"):
        eval_problems(task, 40, 0)


def brute_force_countdown(numbers, target):
    """Every expression tree over the numbers (each once, any order, + - * /, any shape), evaluated with
    Python's Fractions: the in-order token sequences (parentheses dropped) of those equal to the target."""
    import itertools
    from fractions import Fraction as Fr

    def trees(items):                              # items: (value, tokens) in a fixed order
        if len(items) == 1:
            yield items[0]
            return
        for cut in range(1, len(items)):
            for lv, lt in trees(items[:cut]):
                for rv, rt in trees(items[cut:]):
                    for op in "+-*/":
                        if op == "/" and rv == 0:
                            continue
                        v = {"+": lambda: lv + rv, "-": lambda: lv - rv, "*": lambda: lv * rv,
                             "/": lambda: lv / rv}[op]()
                        yield v, lt + (op,) + rt
    out = set()
    for perm in set(itertools.permutations(numbers)):
        for v, toks in trees([(Fr(x), (str(x),)) for x in perm]):
            if v == target:
                out.add(toks)
    return out


@pytest.mark.parametrize("name,kw", [("countdown", {}), ("countdown_small", {}),
                                     ("countdown", dict(n_numbers=4, lo=1, hi=6, max_target=30))])
def test_countdown_solutions_equal_a_brute_force(name, kw):
    """CountdownTask.solutions against an enumeration of expression trees in plain Python: the same in-order
    token sequences (every tree that reaches the target has its answer, and no answer without a tree), and
    each answer's value by Python's own parser, over Fractions, is the target, each number used once."""
    import re
    from fractions import Fraction as Fr
    task = get_task(name, **kw)
    rng = random.Random(3)
    for _ in range(12 if kw else 25):
        p = task.sample(rng)
        sols = task.solutions(p)
        assert sols and len(set(sols)) == len(sols)
        assert {tuple(re.findall(r"\d+|[-+*/]", s)) for s in sols} == brute_force_countdown(
            p.data["numbers"], p.data["target"])
        for s in sols:
            assert eval(re.sub(r"\d+", lambda m: f"Fr({m.group()})", s), {"Fr": Fr}) == p.data["target"], s
            assert sorted(map(int, re.findall(r"\d+", s))) == sorted(p.data["numbers"])


# ---- each task's generators and knobs, read off their output (mutation testing, docs/testing.md) ----

def test_add_problems_and_random_answers_cover_their_ranges():
    """add with d digits: a, b uniform over 0..10^d − 1 (both ends drawn); a random answer is a sum's worth,
    0..2·(10^d − 1), written reversed in the raw style (so "01" = 10 occurs) and plain in the instruct one."""
    for digits in (1, 2):
        hi = 10 ** digits - 1
        task = get_task("add", digits=digits)
        rng = random.Random(0)
        draws = [task.make(rng) for _ in range(3000)]
        for key in ("a", "b"):
            assert min(d[key] for d in draws) == 0 and max(d[key] for d in draws) == hi, key
        p = task.sample(rng)
        raw = [task.random_answer(p, rng) for _ in range(3000)]
        sums = [int(a[::-1]) for a in raw]
        assert min(sums) == 0 and max(sums) == 2 * hi
        assert any(len(a) > 1 and a[0] == "0" for a in raw)          # reversed: a trailing zero comes first
        assert all(task.well_formed(p.data, a) for a in raw)
        inst = get_task("add", style="instruct", digits=digits)
        plain = [inst.random_answer(p, rng) for _ in range(3000)]
        assert not any(len(a) > 1 and a[0] == "0" for a in plain)
        assert max(int(a) for a in plain) == 2 * hi
    assert get_task("add").digits == 2
    assert not get_task("add").well_formed({}, "") and not get_task("add").well_formed({}, "1234")
    assert get_task("add").well_formed({}, "123") and not get_task("add").well_formed({}, "1a")


def test_countdown_random_answers_use_each_number_once_with_fewest_parentheses():
    """A random countdown answer: each number once, + − * only, a value that some tree over the numbers
    reaches, and no pair of parentheses that could be dropped without changing the expression (its value
    with the numbers replaced by generic ones, so that 1*(9+5) = 1*9+5 is no accident)."""
    import itertools
    import re
    task = get_task("countdown", style="instruct")
    rng = random.Random(4)
    ops_seen = set()
    for _ in range(150):
        p = task.sample(rng)
        a = task.random_answer(p, rng)
        assert sorted(map(int, re.findall(r"\d+", a))) == sorted(p.data["numbers"]), a
        assert set(re.findall(r"[^\d()]", a)) <= set("+-*"), a
        ops_seen |= set(re.findall(r"[-+*]", a))
        value = safe_eval(a)
        reachable = {v for perm in itertools.permutations(p.data["numbers"])
                     for v in _tree_values([Fraction(x) for x in perm])}
        assert value in reachable, a
        for i, j in _paren_pairs(a):
            dropped = a[:i] + a[i + 1:j] + a[j + 1:]
            assert _generic_value(dropped) != _generic_value(a), (a, dropped)
    assert ops_seen == set("+-*")


def _tree_values(vals):
    """The values of every tree over vals in this order with + − *."""
    if len(vals) == 1:
        return {vals[0]}
    out = set()
    for cut in range(1, len(vals)):
        for lv in _tree_values(vals[:cut]):
            for rv in _tree_values(vals[cut:]):
                out |= {lv + rv, lv - rv, lv * rv}
    return out


def _generic_value(expr):
    """The value of expr, by Python's parser over Fractions, with its k-th number replaced by the k-th of
    1009, 2003, 3001, 4001."""
    import re
    generic = iter((1009, 2003, 3001, 4001))
    return eval(re.sub(r"\d+", lambda m: f"Fraction({next(generic)})", expr), {"Fraction": Fraction})


def _paren_pairs(s):
    stack, pairs = [], []
    for k, c in enumerate(s):
        if c == "(":
            stack.append(k)
        elif c == ")":
            pairs.append((stack.pop(), k))
    return pairs


def test_countdown_solutions_are_shortest_first_with_fewest_parentheses():
    """The solution list's order is (length, text), the order --warm_skew's power law ranks by, and no
    solution has a pair of parentheses that could be dropped without changing it (generic numbers)."""
    task = get_task("countdown")
    rng = random.Random(6)
    for _ in range(20):
        sols = task.solutions(task.sample(rng))
        assert sols == sorted(set(sols), key=lambda s: (len(s), s))
        for s in sols:
            for i, j in _paren_pairs(s):
                assert _generic_value(s[:i] + s[i + 1:j] + s[j + 1:]) != _generic_value(s), s


def test_countdown_small_knobs_are_its_ranges():
    """countdown_small: three numbers, each 1..5 (both ends drawn), targets 1..20 (both ends drawn)."""
    task = get_task("countdown_small")
    rng = random.Random(0)
    draws = [task.make(rng) for _ in range(3000)]
    nums = [x for d in draws for x in d["numbers"]]
    targets = [d["target"] for d in draws]
    assert all(len(d["numbers"]) == 3 for d in draws)
    assert min(nums) == 1 and max(nums) == 5
    assert min(targets) == 1 and max(targets) == 20
    assert task.name == "countdown_small" and task.style == "raw"
    assert get_task("countdown_small", style="instruct").style == "instruct"


def test_heldout_split_is_the_first_eight_bytes_of_the_digest_exactly():
    """in_heldout against an independent reading of its rule, at several shares, on prompts both sides of
    the cut; share 0 holds nothing out and share 1 everything."""
    import hashlib
    import json
    from rewards import in_heldout
    digest = lambda d: hashlib.sha256(json.dumps(d, sort_keys=True).encode()).digest()
    frac = lambda d: int.from_bytes(digest(d)[:8], "big") / 2 ** 64
    datas = [{"numbers": [a, b], "target": t} for a in range(1, 4) for b in range(1, 4) for t in range(1, 30)]
    for share in (0.1, 0.25, 0.5, 0.9):
        got = [in_heldout(d, share) for d in datas]
        assert got == [frac(d) < share for d in datas]
        assert 0 < sum(got) < len(datas)
    assert not any(in_heldout(d, 0.0) for d in datas) and all(in_heldout(d, 1.0) for d in datas)
    swapped = [{"target": d["target"], "numbers": d["numbers"]} for d in datas]     # the keys in another order
    assert [in_heldout(d, 0.5) for d in swapped] == [in_heldout(d, 0.5) for d in datas]


def test_worked_demo_shows_the_answers_working_and_passes_its_noise_on():
    """A worked response in the instruct style is one of the worked lines filled with the answer's expression
    (spaced, written out here) and the value it is meant to reach, then the tagged answer; the rng picks the
    phrasing; worked_demo draws its answer as demo_answer does, with the noise it is given."""
    from rewards import WORKED_LINES
    cases = [("make_n", {"n": 7}, "3+4", "3 + 4", 7), ("countdown", {"numbers": [3, 5, 7], "target": 22},
             "3*5+7", "3 * 5 + 7", 22), ("add", {"a": 12, "b": 30}, "42", "12 + 30", "42")]
    for name, data, answer, expr, value in cases:
        task = get_task(name, style="instruct")
        problem = task.problem(data)
        rng = random.Random(5)
        seen = {task.worked_response(problem, answer, rng) for _ in range(200)}
        assert seen == {w.format(e=expr, t=value) + f" <answer>{answer}</answer>" for w in WORKED_LINES}, name
        for noise in (0.0, 1.0):
            a, b = random.Random(9), random.Random(9)
            p, want = task.demo_answer(a, noise=noise)
            prompt, response = task.worked_demo(b, noise=noise)
            assert prompt == p.prompt and response.endswith(f"<answer>{want}</answer>")


def test_safe_eval_bounds_are_inclusive():
    """Each bound admits its own value and rejects one past it: MAX_EXPR_CHARS characters, a literal of
    MAX_LITERAL_DIGITS digits, intermediate numerators and denominators of MAX_MAGNITUDE."""
    from rewards import MAX_LITERAL_DIGITS, MAX_MAGNITUDE
    pad = lambda core, n: core + " " * (n - len(core))
    assert safe_eval(pad("1+2", MAX_EXPR_CHARS)) == 3 and safe_eval(pad("1+2", MAX_EXPR_CHARS + 1)) is None
    assert safe_eval("9" * MAX_LITERAL_DIGITS) == 10 ** MAX_LITERAL_DIGITS - 1
    assert safe_eval("9" * (MAX_LITERAL_DIGITS + 1)) is None
    assert MAX_MAGNITUDE == 10 ** 12                                   # the expressions below are built on it
    assert safe_eval("100000*100000*100") == MAX_MAGNITUDE and safe_eval("100000*100000*100+1") is None
    assert safe_eval("1/100000/100000/100") == Fraction(1, MAX_MAGNITUDE)
    assert safe_eval("1/100000/100000/100/2") is None
    assert safe_eval("0-100000*100000*100") == -MAX_MAGNITUDE and safe_eval("0-100000*100000*100-1") is None


def test_score_of_a_non_text_completion_is_zero_in_both_styles():
    for style in ("raw", "instruct"):
        task = get_task("make_n", style=style)
        s = task.score(task.problem({"n": 7}), None)
        assert s["reward"] == 0.0 and not s["format"] and not s["correct"]


def test_task_defaults_and_prompts_are_as_documented():
    """What each task is, read off its constructor's defaults and its prompts in both styles (the texts the
    models are trained and evaluated on)."""
    from rewards import AddTask, CountdownTask, MakeNTask, SmallCountdownTask
    for cls in (AddTask, MakeNTask, CountdownTask, SmallCountdownTask):
        assert cls().style == "raw"
    m, c = MakeNTask(), CountdownTask()
    assert (m.n_terms, m.targets) == (2, tuple(range(5, 14)))
    assert (c.n_numbers, c.lo, c.hi, c.max_target) == (3, 1, 9, 50)
    suffix = " Think briefly, then give only the final answer inside <answer>...</answer>."
    cases = [("make_n", {}, {"n": 7}, "N=07:", "Write 7 as a sum of 2 single digits, in the form d+d."),
             ("make_n", {"n_terms": 3}, {"n": 12}, "N=12:", "Write 12 as a sum of 3 single digits, in the form d+d+d."),
             ("countdown", {}, {"numbers": [3, 5, 7], "target": 22}, "3,5,7=22:",
              "Using the numbers 3, 5, 7 each exactly once, with + - * / and parentheses, write an expression "
              "equal to 22."),
             ("add", {}, {"a": 12, "b": 30}, "12+30=", "Compute 12+30.")]
    for name, kw, data, raw, instruction in cases:
        assert get_task(name, **kw).problem(data).prompt == raw
        assert get_task(name, style="instruct", **kw).problem(data).prompt == instruction + suffix


def test_add_instruct_answers_are_written_plainly():
    task = get_task("add", style="instruct")
    p = task.problem({"a": 12, "b": 30})
    assert task.reward(p, "<answer>42</answer>") == 1.0 and task.reward(p, "<answer>24</answer>") == 0.0
    assert get_task("add").reward(get_task("add").problem({"a": 12, "b": 30}), "24") == 1.0


def test_demonstrations_default_to_no_noise():
    for name in ("make_n", "countdown"):
        task = get_task(name, style="instruct")
        for fn in (task.demo_answer, task.worked_demo, task.demo):
            draws = lambda **kw: [fn(random.Random(seed), **kw) for seed in range(5)]
            text = lambda ds: [(p if isinstance(p, str) else p.prompt, x) for p, x in ds]
            assert text(draws()) == text(draws(noise=0.0)) != text(draws(noise=1.0))


def _draw_random_value(nums, rng):
    """CountdownTask._random_value's draw, written out: shuffle, then join two random values with a random
    operator until one is left (None on a division by zero). The same rng calls, so the same value."""
    vals = [Fraction(x) for x in nums]
    rng.shuffle(vals)
    while len(vals) > 1:
        i, j = sorted(rng.sample(range(len(vals)), 2))
        b, a = vals.pop(j), vals.pop(i)
        op = rng.choice("+-*/")
        if op == "/" and b == 0:
            return None
        vals.append(a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b)
    return vals[0]


def _draw_random_answer(nums, rng):
    """CountdownTask.random_answer's draw as a tree: (its value, its numbers in order), the same rng calls."""
    items = [(Fraction(x), 3) for x in nums]
    rng.shuffle(items)
    while len(items) > 1:
        i, j = sorted(rng.sample(range(len(items)), 2))
        (rv, _), (lv, _) = items.pop(j), items.pop(i)
        op = rng.choice("+-*")
        items.append((lv + rv if op == "+" else lv - rv if op == "-" else lv * rv, 0))
    return items[0][0]


@pytest.mark.parametrize("n_numbers", [3, 4])
def test_countdown_draws_equal_their_written_out_trees(n_numbers):
    """The target of make() is the value of the tree _random_value drew, and the random answer's text
    evaluates to the value of the tree random_answer drew (its parentheses keep the tree's meaning, and none
    can be dropped), each checked against the draw written out here with the same rng calls; numbers include
    0 (divisions by zero are drawn). With 4 numbers both sides of a join can be expressions."""
    task = get_task("countdown", n_numbers=n_numbers, lo=0, hi=6)
    nones = 0
    for seed in range(1500 if n_numbers == 3 else 600):
        draw = random.Random(seed + 10_000)
        nums = [draw.randint(0, 6) for _ in range(n_numbers)]
        got, want = task._random_value(nums, random.Random(seed)), _draw_random_value(nums, random.Random(seed))
        assert got == want, (nums, seed)
        nones += want is None
        p = task.problem({"numbers": nums, "target": 1})
        answer = task.random_answer(p, random.Random(seed))
        assert safe_eval(answer) == _draw_random_answer(nums, random.Random(seed)), (nums, answer)
        for i, j in _paren_pairs(answer):
            dropped = answer[:i] + answer[i + 1:j] + answer[j + 1:]
            assert _generic_value(dropped) != _generic_value(answer), (answer, dropped)
    assert nones > 0


def test_task_refusals_name_the_choices_and_splits_default_to_training():
    from rewards import Task
    with pytest.raises(ValueError, match=r"unknown task 'mult'; choose from \['add', 'countdown', 'countdown_small', "
                                         r"'make_n'\]"):
        get_task("mult")
    with pytest.raises(ValueError, match="style must be 'raw' or 'instruct', got 'chat'"):
        get_task("add", style="chat")
    assert Task().style == "raw"
    task = get_task("countdown_small")
    assert task.sample(random.Random(4)) == task.sample(random.Random(4), split="eval")     # no held-out share
    task.heldout = 0.25
    assert task.sample(random.Random(4)) == task.sample(random.Random(4), split="train")
    assert task.sample(random.Random(4)) != task.sample(random.Random(4), split="eval")
    with pytest.raises(ValueError, match="split must be 'train' or 'eval', got 'test'"):
        task.sample(random.Random(4), split="test")
