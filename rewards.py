"""
Verifiable arithmetic tasks with exact rewards, and a safe evaluator no policy output can break.

Every reward is a float in [0, 1] for any string whatsoever, computed quickly, and no code is ever
run: expressions go through safe_eval, a small recursive-descent parser over exact Fractions.

Tasks (TASKS, get_task):
- add:       "37+45=" -> "28"  (the sum written least-significant digit first, which a small GPT
             learns much faster: each digit then depends only on digits already seen). One answer.
- make_n:    "N=07:" -> any "a+b" with single digits a + b = N. Several answers (6-10 for N in
             5..13), and the whole answer space (100 well-formed answers) can be enumerated.
- countdown: "3,5,7=22:" -> an expression using each number exactly once with + - * / and
             parentheses that equals the target, e.g. "3*5+7".
- countdown_small: countdown with numbers 1..5 and targets up to 20 (the real model's task, docs/smollm2).
Each task has two prompt styles: "raw" (above, for from-scratch models; the completion is the
answer) and "instruct" (an instruction for chat models; the answer is read from the last
<answer>...</answer> in the completion).
Held-out prompts (a task's `heldout` share, train.py --heldout): a stable hash of a prompt's data puts it in
the evaluation split or the training split, so the prompts trained on and the prompts evaluated on are
disjoint on every machine and run (in_heldout).
"""

import hashlib
import json
import re
from dataclasses import dataclass, field
from fractions import Fraction

# The characters raw prompts and answers use: the character tokenizer is built from this.
ALPHABET = "0123456789+-*/()=:,N "

# safe_eval bounds: an input beyond any of them is rejected (None), never evaluated
MAX_EXPR_CHARS = 256        # characters in the expression
MAX_DEPTH = 32              # nesting of parentheses
MAX_LITERAL_DIGITS = 6      # digits in one literal (values < 10**6)
MAX_MAGNITUDE = 10 ** 12    # bound on numerator and denominator of every intermediate value

_DIGITS = "0123456789"
_SPACE = " \t"


class _Reject(Exception):
    pass


def safe_eval(expr):
    """Evaluate a non-negative-integer arithmetic expression with + - * / and parentheses exactly,
    with the usual precedence and left associativity. Returns a Fraction, or None for anything
    else: a syntax error, division by zero, any other character (unicode digits included), a
    literal with a leading zero, input or values beyond the bounds above. Never raises."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        return None
    tokens = []
    i = 0
    while i < len(expr):                       # tokenize: literals, operators, parentheses
        c = expr[i]
        if c in _SPACE:
            i += 1
        elif c in _DIGITS:
            j = i
            while j < len(expr) and expr[j] in _DIGITS:
                j += 1
            lit = expr[i:j]
            if len(lit) > MAX_LITERAL_DIGITS or (len(lit) > 1 and lit[0] == "0"):
                return None
            tokens.append(int(lit))
            i = j
        elif c in "+-*/()":
            tokens.append(c)
            i += 1
        else:
            return None
    try:
        value, pos = _parse_expr(tokens, 0, 0)
    except _Reject:
        return None
    return value if pos == len(tokens) else None


def _check(x):
    if abs(x.numerator) > MAX_MAGNITUDE or x.denominator > MAX_MAGNITUDE:
        raise _Reject
    return x


def _parse_expr(tokens, pos, depth):
    # expr := term (('+' | '-') term)*
    value, pos = _parse_term(tokens, pos, depth)
    while pos < len(tokens) and tokens[pos] in ("+", "-"):
        op = tokens[pos]
        rhs, pos = _parse_term(tokens, pos + 1, depth)
        value = _check(value + rhs if op == "+" else value - rhs)
    return value, pos


def _parse_term(tokens, pos, depth):
    # term := factor (('*' | '/') factor)*
    value, pos = _parse_factor(tokens, pos, depth)
    while pos < len(tokens) and tokens[pos] in ("*", "/"):
        op = tokens[pos]
        rhs, pos = _parse_factor(tokens, pos + 1, depth)
        if op == "/" and rhs == 0:
            raise _Reject
        value = _check(value * rhs if op == "*" else value / rhs)
    return value, pos


def _parse_factor(tokens, pos, depth):
    # factor := literal | '(' expr ')'
    if pos >= len(tokens):
        raise _Reject
    tok = tokens[pos]
    if isinstance(tok, int):
        return Fraction(tok), pos + 1
    if tok == "(":
        if depth >= MAX_DEPTH:
            raise _Reject
        value, pos = _parse_expr(tokens, pos + 1, depth + 1)
        if pos >= len(tokens) or tokens[pos] != ")":
            raise _Reject
        return value, pos + 1
    raise _Reject


def literals(expr):
    """The integer literals of an expression, in order."""
    return [int(x) for x in re.findall(r"[0-9]+", expr)]


def canonical(answer):
    """The form in which two accepted answers count as the same: whitespace removed (an accepted answer
    holds whitespace only between tokens, in the instruct style, so removing it merges no two numbers)."""
    return "".join(answer.split())


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def in_heldout(data, share):
    """Whether the prompt with this data is in the evaluation split: the first 8 bytes of the SHA-256 of its
    data (JSON, sorted keys), read as a fraction of 2**64, below `share`. The same on every machine and run
    (Python's own hash() is salted per process)."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2 ** 64


MAX_SPLIT_DRAWS = 10_000    # draws before sample() gives up on a split that holds (almost) no prompt


@dataclass
class Problem:
    prompt: str                 # what the model is given, in the task's style
    data: dict = field(default_factory=dict)   # what the reward needs (target, numbers, ...)


class Task:
    """The shared interface. A subclass defines make(rng) -> data, raw_prompt(data),
    instruction(data), is_correct(data, answer), solutions(problem), random_answer(problem, rng) and
    worked(data, answer) -> (the answer's expression, the value it is meant to reach)."""

    name = ""
    heldout = 0.0           # the share of prompts held out for evaluation (0: train and evaluate on one stream)

    def __init__(self, style="raw"):
        if style not in ("raw", "instruct"):
            raise ValueError(f"style must be 'raw' or 'instruct', got {style!r}")
        self.style = style

    def sample(self, rng, split="train"):
        """A problem drawn by rng. With held-out prompts (heldout > 0), drawn again until it lies in `split`
        ("train" or "eval"); without, every prompt is in both."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        for _ in range(MAX_SPLIT_DRAWS):
            data = self.make(rng)
            if self.heldout == 0 or in_heldout(data, self.heldout) == (split == "eval"):
                return self.problem(data)
        raise ValueError(f"no {self.name} prompt of the {split} split in {MAX_SPLIT_DRAWS} draws: "
                         f"--heldout {self.heldout} leaves it (nearly) empty")

    def problem(self, data):
        """The Problem for given data (e.g. {"n": 7} for make_n), its prompt in the task's style."""
        prompt = self.raw_prompt(data) if self.style == "raw" else (
            self.instruction(data) + " Think briefly, then give only the final answer inside "
            "<answer>...</answer>.")
        return Problem(prompt=prompt, data=data)

    def extract(self, completion):
        """The answer part of a completion (None when there is none): the whole completion in the
        raw style, the last <answer>...</answer> in the instruct style."""
        if self.style == "raw":
            return completion
        found = _ANSWER_TAG.findall(completion)
        return found[-1] if found else None

    def score(self, problem, completion):
        """The reward and its breakdown: format (an answer of the task's form was found) and
        correct. reward = 1.0 if correct else 0.0.
        Whitespace: the raw style's completion is the answer verbatim, so any whitespace in it breaks the
        format (" 4+9" is not "4+9"); the instruct style's tagged answer is stripped at its ends and may
        hold spaces between tokens ("3 + 4"), never inside a number ("1 2*1+2" is two literals side by
        side: malformed). An accepted answer is returned in canonical form."""
        answer = self.extract(completion) if isinstance(completion, str) else None
        if answer is not None and self.style == "instruct":
            answer = answer.strip()
        fmt = (answer is not None and (self.style == "instruct" or not any(c.isspace() for c in answer))
               and self.well_formed(problem.data, answer))
        correct = bool(fmt and self.is_correct(problem.data, answer))
        return {"reward": 1.0 if correct else 0.0, "format": fmt, "correct": correct,
                "answer": canonical(answer) if fmt else answer}

    def reward(self, problem, completion):
        return self.score(problem, completion)["reward"]

    def demo(self, rng, noise=0.0, skew=0.0):
        """A (prompt, answer) pair for the supervised warm start: the answer is a correct one, drawn
        with probability ∝ (i + 1)^-skew over the task's list of solutions (skew 0: uniform; larger:
        a few answers take most of the mass), or with probability `noise` a random well-formed answer
        (mostly wrong), so that the starting policy spreads its mass and starts below perfect accuracy."""
        problem, answer = self.demo_answer(rng, noise, skew)
        return problem.prompt, answer

    def demo_answer(self, rng, noise=0.0, skew=0.0):
        """(problem, answer) as demo() draws them."""
        problem = self.sample(rng)
        if rng.random() < noise:
            return problem, self.random_answer(problem, rng)
        sols = self.solutions(problem)
        if skew == 0:
            return problem, rng.choice(sols)
        return problem, rng.choices(sols, weights=[(i + 1) ** -skew for i in range(len(sols))])[0]


    def worked_demo(self, rng, noise=0.0):
        """A (prompt, response) pair for the cold start of a pretrained chat model: the response is a short
        worked line in one of several phrasings and lengths, then the tagged answer (drawn as demo() draws
        it: with probability `noise` a random answer, whose worked line is then as wrong as the answer).
        Raw style: the response is the answer alone, as in demo()."""
        problem, answer = self.demo_answer(rng, noise=noise)
        return problem.prompt, self.worked_response(problem, answer, rng)

    def worked_response(self, problem, answer, rng):
        """A worked line in a phrasing drawn by rng, then the tagged answer (raw style: the answer alone)."""
        if self.style == "raw":
            return answer
        expr, value = self.worked(problem.data, answer)
        return f"{rng.choice(WORKED_LINES).format(e=expr, t=value)} <answer>{answer}</answer>"


# the cold start's worked lines: {e} the answer's expression (spaced), {t} the value it is meant to reach
WORKED_LINES = (
    "{e} = {t}.",
    "Check: {e} = {t}.",
    "We need {t}. Trying {e}, which gives {t}.",
    "The result must be {t}, and {e} = {t}, so this works.",
    "Let me think step by step. I am looking for {t}. If I take {e}, I get {t}. That is the answer.",
    "{e} makes {t}.",
)


def spaced(expr):
    """An expression with a space around each operator: "3*5+7" -> "3 * 5 + 7"."""
    return re.sub(r"\s*([+\-*/])\s*", r" \1 ", expr).strip()


class AddTask(Task):
    """a + b = ? with one correct answer, written reversed (least-significant digit first)."""

    name = "add"

    def __init__(self, style="raw", digits=2):
        super().__init__(style)
        self.digits = digits

    def make(self, rng):
        hi = 10 ** self.digits - 1
        return {"a": rng.randint(0, hi), "b": rng.randint(0, hi)}

    def raw_prompt(self, d):
        return f"{d['a']}+{d['b']}="

    def instruction(self, d):
        return f"Compute {d['a']}+{d['b']}."

    def answer_of(self, d):
        s = str(d["a"] + d["b"])
        return s[::-1] if self.style == "raw" else s

    def well_formed(self, d, answer):
        return 0 < len(answer) <= self.digits + 1 and all(c in _DIGITS for c in answer)

    def is_correct(self, d, answer):
        return answer == self.answer_of(d)

    def solutions(self, problem):
        return [self.answer_of(problem.data)]

    def worked(self, d, answer):
        return f"{d['a']} + {d['b']}", answer

    def random_answer(self, problem, rng):
        s = str(rng.randint(0, 2 * (10 ** self.digits - 1)))
        return s[::-1] if self.style == "raw" else s


class MakeNTask(Task):
    """Write N as a sum of n_terms single digits: "N=07:" -> "3+4", "0+7", ...
    The answer space (10**n_terms well-formed answers) is small enough to enumerate exactly."""

    name = "make_n"

    def __init__(self, style="raw", n_terms=2, targets=tuple(range(5, 14))):
        super().__init__(style)
        self.n_terms = n_terms
        self.targets = tuple(targets)
        self._pattern = re.compile(r"[0-9]" + r"\+[0-9]" * (n_terms - 1))

    def make(self, rng):
        return {"n": rng.choice(self.targets)}

    def raw_prompt(self, d):
        return f"N={d['n']:02d}:"

    def instruction(self, d):
        return (f"Write {d['n']} as a sum of {self.n_terms} single digits, "
                f"in the form {'+'.join('d' * self.n_terms)}.")

    def well_formed(self, d, answer):
        # spaces only around '+' (instruct style): "3 + 4" is well formed, "3 4+1" is not
        return self._pattern.fullmatch(re.sub(r"[ \t]*\+[ \t]*", "+", answer)) is not None

    def is_correct(self, d, answer):
        return safe_eval(answer) == d["n"]

    def all_answers(self):
        """Every well-formed answer, in a fixed order (the enumerable answer space)."""
        out = [""]
        for k in range(self.n_terms):
            out = [s + ("+" if k else "") + c for s in out for c in _DIGITS]
        return out

    def solutions(self, problem):
        return [a for a in self.all_answers() if self.is_correct(problem.data, a)]

    def worked(self, d, answer):
        return spaced(answer), d["n"]

    def random_answer(self, problem, rng):
        return "+".join(rng.choice(_DIGITS) for _ in range(self.n_terms))


# countdown: expressions as trees over the numbers, rendered with the fewest parentheses
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _expressions(items):
    """All (value, text, precedence) built from every number of `items` exactly once, in any
    order and any tree shape. items: list of (value, text, precedence)."""
    if len(items) == 1:
        yield items[0]
        return
    n = len(items)
    for mask in range(1, 2 ** n - 1):                          # split into two nonempty sides
        left = [items[i] for i in range(n) if mask >> i & 1]
        right = [items[i] for i in range(n) if not mask >> i & 1]
        for lv, lt, lp in _expressions(left):
            for rv, rt, rp in _expressions(right):
                for op, p in _PREC.items():
                    if op == "/" and rv == 0:
                        continue
                    v = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else None}[op]
                    ltxt = f"({lt})" if lp < p else lt
                    rtxt = f"({rt})" if rp < p or (rp == p and op in "-/") else rt
                    yield v, ltxt + op + rtxt, p


class CountdownTask(Task):
    """Reach the target with each given number used exactly once: "3,5,7=22:" -> "3*5+7".
    Knobs: how many numbers (n_numbers), their range (lo..hi), the largest target."""

    name = "countdown"

    def __init__(self, style="raw", n_numbers=3, lo=1, hi=9, max_target=50):
        super().__init__(style)
        self.n_numbers, self.lo, self.hi, self.max_target = n_numbers, lo, hi, max_target

    def make(self, rng):
        # only problems with a solution: the target is the value of a random expression
        while True:
            nums = [rng.randint(self.lo, self.hi) for _ in range(self.n_numbers)]
            v = self._random_value(nums, rng)
            if v is not None and v.denominator == 1 and 1 <= v <= self.max_target:
                return {"numbers": nums, "target": int(v)}

    def _random_value(self, nums, rng):
        vals = [Fraction(x) for x in nums]
        rng.shuffle(vals)
        while len(vals) > 1:
            i, j = sorted(rng.sample(range(len(vals)), 2))
            b, a = vals.pop(j), vals.pop(i)
            op = rng.choice("+-*/")
            if op == "/" and b == 0:
                return None
            vals.append({"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0}[op])
        return vals[0]

    def raw_prompt(self, d):
        return ",".join(map(str, d["numbers"])) + f"={d['target']}:"

    def instruction(self, d):
        return (f"Using the numbers {', '.join(map(str, d['numbers']))} each exactly once, with + - * / "
                f"and parentheses, write an expression equal to {d['target']}.")

    def well_formed(self, d, answer):
        return safe_eval(answer) is not None

    def is_correct(self, d, answer):
        return sorted(literals(answer)) == sorted(d["numbers"]) and safe_eval(answer) == d["target"]

    def solutions(self, problem):
        d = problem.data
        items = [(Fraction(x), str(x), 3) for x in d["numbers"]]
        found = {t for v, t, _ in _expressions(items) if v == d["target"]}
        return sorted(found, key=lambda s: (len(s), s))

    def worked(self, d, answer):
        return spaced(answer), d["target"]

    def random_answer(self, problem, rng):
        items = [(Fraction(x), str(x), 3) for x in problem.data["numbers"]]
        rng.shuffle(items)
        while len(items) > 1:                     # join two random items with a random operator
            i, j = sorted(rng.sample(range(len(items)), 2))
            (_, rt, rp), (_, lt, lp) = items.pop(j), items.pop(i)
            op = rng.choice("+-*")
            p = _PREC[op]
            ltxt = f"({lt})" if lp < p else lt
            rtxt = f"({rt})" if rp < p or (rp == p and op == "-") else rt
            items.append((None, ltxt + op + rtxt, p))
        return items[0][1]


class SmallCountdownTask(CountdownTask):
    """countdown with three numbers from 1 to 5 and targets up to 20: easier for a small pretrained model, with
    several correct answers a prompt (a candidate for the real model's task: experiments/realmodel.py --pilot)."""

    name = "countdown_small"

    def __init__(self, style="raw"):
        super().__init__(style, n_numbers=3, lo=1, hi=5, max_target=20)


TASKS = {cls.name: cls for cls in (AddTask, MakeNTask, CountdownTask, SmallCountdownTask)}


def get_task(name, style="raw", **kwargs):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](style=style, **kwargs)
