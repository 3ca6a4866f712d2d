"""
Evaluation (docs/method.md M8): sample k answers per eval prompt and measure accuracy, unbiased
pass@k, distinct and effective correct answers, token entropy; on tasks whose answers can be listed,
exactly: the policy's probability of every correct answer, KL(π‖p*), KL(p*‖π), the true log Z.

    summarize(run_dir)      the final eval of a run, and the first at accuracy >= 0.9 (matched accuracy)
"""

import json
import math
import os
import random
import weakref
from collections import Counter

import torch

import flowrl
from rewards import in_heldout
from rollout import chunked_logprobs, enumerate_responses, from_tokens, generate, sequence_logprobs


def pass_at_k(n, c, k):
    """Unbiased pass@k = 1 − C(n−c, k)/C(n, k) (Chen et al. 2021), from n samples of which c are correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def decode_responses(tok, rollout):
    """The text of each response, up to (not including) the token that stopped it."""
    out = []
    for row, m in zip(rollout.response.tolist(), rollout.mask.tolist()):
        out.append(tok.decode([t for t, keep in zip(row, m) if keep and t not in tok.stop_ids]))
    return out


def eval_problems(task, n_prompts, seed):
    """The eval prompts. With held-out prompts (task.heldout > 0): n_prompts distinct prompts of the
    evaluation split (make_n: every held-out target), the same for every seed, none of them ever trained on.
    Without: make_n's whole (small) prompt set, the same prompts it trains on (the question is how the
    policy spreads over each prompt's answers); other tasks: prompts from a stream apart from training's."""
    if task.heldout > 0:
        if hasattr(task, "targets"):
            return [task.problem({"n": n}) for n in task.targets if in_heldout({"n": n}, task.heldout)]
        rng, out, seen = random.Random(10 ** 6), [], set()
        for _ in range(100 * n_prompts):
            if len(out) == n_prompts:
                break
            p = task.sample(rng, split="eval")
            if p.prompt not in seen:
                seen.add(p.prompt)
                out.append(p)
        if len(out) < n_prompts:
            raise ValueError(f"the {task.name} evaluation split holds fewer than {n_prompts} distinct prompts: "
                             "lower --eval_prompts or raise --heldout")
        return out
    if hasattr(task, "targets"):
        return [task.problem({"n": n}) for n in task.targets]
    rng = random.Random(10 ** 6 + seed)
    return [task.sample(rng) for _ in range(n_prompts)]


def enumerable(task, tok):
    """Exact metrics need a task whose answers can be listed, in the raw style of a character
    tokenizer (one tokenization per answer)."""
    return hasattr(task, "all_answers") and tok.alphabet is not None and task.style == "raw"


@torch.no_grad()
def exact_correct_probs(model, tok, task, problems):
    """For enumerable tasks: the policy's exact probability of each correct answer (answer + EOS),
    by teacher forcing, in float64. Returns one tensor of probabilities per problem."""
    prompts, answers, owner = [], [], []
    for i, p in enumerate(problems):
        for s in task.solutions(p):
            prompts.append(tok.encode_prompt(p.prompt))
            answers.append(tok.encode(s) + [tok.eos_id])
            owner.append(i)
    batch = from_tokens(prompts, answers, tok.eos_id, next(model.parameters()).device)
    logp = sequence_logprobs(model, batch, with_entropy=False)[0].double().sum(-1).exp().cpu()           # (M,) float64
    owner = torch.tensor(owner)
    return [logp[owner == i] for i in range(len(problems))]


# frozen π_ref -> {(prompt, budget, weights' versions): its rewarded responses}
_REF_TREES = weakref.WeakKeyDictionary()


def ref_rewarded(ref, prompt, score, eos_id, max_new_tokens, min_prob, max_frontier):
    """The rewarded responses in π_ref's token tree for one prompt. π_ref is frozen in training, so its tree
    is expanded once per prompt and kept; the key holds its parameters' version counters, which any
    in-place change of a weight bumps, so a changed model is expanded anew."""
    key = (tuple(prompt), max_new_tokens, min_prob, max_frontier, tuple(p._version for p in ref.parameters()))
    trees = _REF_TREES.setdefault(ref, {})
    if key not in trees:
        resp = enumerate_responses(ref, prompt, eos_id=eos_id, max_new_tokens=max_new_tokens, min_prob=min_prob,
                                   max_frontier=max_frontier)[0]
        trees[key] = [y for y in resp if score(y) > 0]
    return trees[key]


@torch.no_grad()
def rewarded_support(model, ref, tok, task, problem, max_new_tokens, min_prob=1e-6, max_frontier=1000):
    """The responses the exact metrics sum over, for one prompt: every response π gives mass to (its token
    tree expanded by enumerate_responses) and every rewarded response π_ref gives mass to (ref's tree;
    ref=None: π's alone), each scored by the task's own reward (so "correct" is whatever the reward
    accepts, listed solution or not). Returns (log π (U,), log π_ref (U,) or None, r (U,), in_pi (U,) bool:
    y is in π's tree, pruned: π's mass left unexpanded), float64."""
    prompt = tok.encode_prompt(problem.prompt)
    score = lambda y: task.reward(problem, tok.decode([t for t in y if t != tok.eos_id]))
    resp, log_pi, pruned = enumerate_responses(model, prompt, eos_id=tok.eos_id, max_new_tokens=max_new_tokens,
                                               min_prob=min_prob, max_frontier=max_frontier)
    log_pi, n_pi = log_pi.cpu(), len(resp)
    device = next(model.parameters()).device
    forced = lambda m, ys: sequence_logprobs(m, from_tokens([prompt] * len(ys), [list(y) for y in ys], tok.eos_id,
                                                            device), with_entropy=False)[0].double().sum(-1).cpu()
    log_ref = None
    if ref is not None:
        seen = set(resp)
        extra = [y for y in ref_rewarded(ref, prompt, score, tok.eos_id, max_new_tokens, min_prob, max_frontier)
                 if y not in seen]                                # rewarded under π_ref, pruned from π's tree
        if extra:
            resp, log_pi = resp + extra, torch.cat([log_pi, forced(model, extra)])
        log_ref = forced(ref, resp)
    r = torch.tensor([score(y) for y in resp], dtype=torch.float64)
    in_pi = torch.arange(len(resp)) < n_pi
    return log_pi, log_ref, r, in_pi, pruned


@torch.no_grad()
def exact_metrics(model, ref, tok, task, problems, beta, max_new_tokens):
    """Exact metrics on enumerable tasks (docs/method.md M8), per prompt, averaged; "correct" = reward 1,
    over rewarded_support. Always: correct_mass (π's mass on every rewarded response), effective_correct
    = exp(H(π(·|correct))) and answer_entropy = H(π(·|correct)). With a reference, against the target
    p* ∝ π_ref·exp(β·r): kl_to_target = KL(π‖p*) over π's tree (pruned_mass: what was left unexpanded),
    kl_from_target = KL(p*‖π) (rewarded responses exactly, the wrong ones lumped into one bucket: a
    lower bound on their part, which is below e^-β), log_z_true = log(e^β·m + 1 − m) with m π_ref's
    rewarded mass, and the shape of π over the correct answers against p*'s, which is π_ref's there:
    kl_shape_to_target = KL(π(·|correct) ‖ p*(·|correct)) ("shape KL") and target_effective_correct =
    exp(H(p*(·|correct))). Returns (averages, the true log Z per prompt or None)."""
    out = {}
    add = lambda k, v: out.setdefault(k, []).append(float(v))
    for p in problems:
        log_pi, log_ref, r, in_pi, pruned = rewarded_support(model, ref, tok, task, p, max_new_tokens)
        c = r > 0
        pc = log_pi[c].exp()                                                          # π on the rewarded responses
        add("correct_mass", pc.sum())
        h = answer_entropy(pc) if c.any() else 0.0
        add("answer_entropy", h)
        add("effective_correct", math.exp(h) if c.any() else 0.0)
        if ref is None:
            continue
        rc = log_ref[c].exp()                                                         # π_ref on them
        log_z = flowrl.binary_log_partition(rc.sum(), beta)
        add("kl_to_target", flowrl.kl_to_target(log_pi[in_pi], log_ref[in_pi], r[in_pi], beta, log_z))
        log_pstar_c = log_ref[c] + beta - log_z                                       # p* on the rewarded responses
        wrong_pstar, wrong_pi = (1 - rc.sum()) / log_z.exp(), (1 - pc.sum()).clamp(min=1e-300)
        add("kl_from_target", (log_pstar_c.exp() * (log_pstar_c - log_pi[c])).sum()
            + wrong_pstar * (wrong_pstar / wrong_pi).log())
        add("log_z_true", log_z)
        add("pruned_mass", pruned)
        q_pi, q_star = pc / pc.sum(), rc / rc.sum()      # p*(·|correct) = π_ref(·|correct)
        add("kl_shape_to_target", (q_pi * (q_pi.clamp(min=1e-300) / q_star).log()).sum())
        add("target_effective_correct", math.exp(answer_entropy(rc)))
    return {k: sum(v) / len(v) for k, v in out.items()}, out.get("log_z_true")


def answer_counts(task, problems, texts, k, formats=None):
    """Per prompt: the number of correct samples and a Counter of the distinct correct answers; formats,
    a list if given, gets each sample's format flag."""
    n_correct, correct = [], []
    for i, p in enumerate(problems):
        scores = [task.score(p, t) for t in texts[i * k:(i + 1) * k]]
        n_correct.append(sum(s["correct"] for s in scores))
        correct.append(Counter(s["answer"] for s in scores if s["correct"]))
        if formats is not None:
            formats.extend(bool(s["format"]) for s in scores)
    return n_correct, correct


def answer_entropy(probs):
    """H(q), q = probs / Σ probs: the entropy of a distribution over answers, from exact probabilities
    (a tensor) or from sample counts (a Counter). None where there is no correct answer."""
    if isinstance(probs, Counter):
        n = sum(probs.values())
        return -sum(v / n * math.log(v / n) for v in probs.values()) if n else None
    q = probs / probs.sum()
    return -(q * q.clamp(min=1e-30).log()).sum().item()


@torch.no_grad()
def evaluate(model, tok, task, problems, *, k, max_new_tokens, seed, step, chunk_rows, beta, ref=None,
             learned_log_z=None, n_logged=0, temperature=1.0, top_p=1.0):
    """One evaluation record: accuracy (the mean over k samples at T = 1: avg@k = pass@1), pass@j for
    j in {1, 2, 4, ..., k} and each prompt's count of correct samples, distinct correct answers among
    the k samples, the effective number of correct answers exp(H(π restricted to correct answers))
    (exact where the answers can be listed, else from the samples), the mean token entropy; on
    enumerable tasks with a reference, the exact metrics against p* and, given learned_log_z (a
    function of the problems), the learned log Z beside the true one. The exact metrics run outside
    autocast (float32 forwards, float64 sums) on every device. With n_logged > 0, the record's
    "samples" holds the first sample of the first n_logged prompts. temperature and top_p: the sampling
    of the k samples (the paper evaluates at T = 0.6, top-p 0.95); the token entropy is π's own (T = 1)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed * 1000003 + step)
    ro = generate(model, [tok.encode_prompt(p.prompt) for p in problems], num_samples=k,
                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, eos_id=tok.eos_id,
                  stop_ids=tok.stop_ids, generator=gen)
    _, ent = chunked_logprobs(model, ro, 1.0, chunk_rows)                             # (N, T)
    texts = decode_responses(tok, ro)
    formats = []
    n_correct, correct = answer_counts(task, problems, texts, k, formats)
    out = {"kind": "eval", "step": step, "accuracy": sum(n_correct) / (k * len(problems))}
    if (temperature, top_p) != (1.0, 1.0):
        out.update(temperature=temperature, top_p=top_p)
    out["format"] = sum(formats) / len(formats)                  # samples with an answer of the task's form
    out["length"] = ro.mask.sum().item() / ro.mask.shape[0]      # mean response length in tokens
    for j in sorted({2 ** i for i in range(k.bit_length()) if 2 ** i <= k} | {k}):
        out[f"pass@{j}"] = sum(pass_at_k(k, c, j) for c in n_correct) / len(problems)
    out["pass@k"], out["k"] = out[f"pass@{k}"], k
    out["correct_counts"] = n_correct            # per prompt, of k: pass@j for any j <= k (experiments/passk.py)
    out["distinct_correct"] = sum(len(c) for c in correct) / len(correct)
    out["entropy"] = (ent.sum() / ro.mask.sum()).item()
    if enumerable(task, tok):                     # exact, from the policy's probabilities (and π_ref's)
        with torch.autocast(device.type, enabled=False):
            exact, true_z = exact_metrics(model, ref, tok, task, problems, beta, max_new_tokens)
            lz = learned_log_z(problems).double().cpu() if learned_log_z is not None and ref is not None else None
        out.update(exact)
        if lz is not None:
            out["log_z/learned"] = lz.mean().item()
            out["log_z_abs_err"] = (lz - torch.tensor(true_z)).abs().mean().item()
    else:                                         # from the samples: the empirical distribution
        ans_h = [answer_entropy(c) for c in correct]
        out["effective_correct"] = sum(math.exp(h) if h is not None else 0.0 for h in ans_h) / len(ans_h)
        out["answer_entropy"] = sum(h or 0.0 for h in ans_h) / len(ans_h)
    if n_logged:
        scores = [task.score(p, texts[i * k]) for i, p in enumerate(problems[:n_logged])]
        out["samples"] = [{"step": step, "prompt": p.prompt, "completion": texts[i * k], "reward": s["reward"],
                           "correct": bool(s["correct"])} for i, (p, s) in enumerate(zip(problems, scores))]
    return out


def summarize(run_dir):
    """A run's final eval metrics, and the same at the first eval with accuracy >= 0.9 (matched
    accuracy) or None; with --paper_eval, the final accuracy at T=0.6, top-p 0.95 as paper_accuracy;
    under "start", the same of the step-0 eval (the warm or cold start), where there is one.
    Reads run_dir/metrics.jsonl only."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in records if r["kind"] == "eval"]
    paper = [r for r in records if r["kind"] == "eval_paper"]
    keys = ("step", "accuracy", "pass@1", "pass@k", "k", "distinct_correct", "effective_correct", "entropy",
            "answer_entropy", "correct_mass", "kl_to_target", "kl_shape_to_target", "target_effective_correct")
    pick = lambda r: {k: r[k] for k in keys if k in r}
    matched = next((r for r in evals if r["accuracy"] >= 0.9), None)
    out = {**pick(evals[-1]), "matched_accuracy": pick(matched) if matched else None}
    if paper and paper[-1]["step"] == evals[-1]["step"]:
        out["paper_accuracy"] = paper[-1]["accuracy"]
    if evals[0]["step"] == 0:                   # the start the run trained from (its step-0 eval)
        out["start"] = pick(evals[0])
        if paper and paper[0]["step"] == 0:
            out["start"]["paper_accuracy"] = paper[0]["accuracy"]
    return out


def final_table(summary, k, n_prompts, grad_clip):
    """The table train.py prints at the end: one row per run, each number once, below a "warm start" row
    (the step-0 eval every run started from, where all runs share one); the last column, where every row
    has it, is the accuracy at the paper's sampling setting (T=0.6, top-p 0.95). A column whose value is
    the same in every one of several rows is said once, under the table, instead."""
    cols = [("accuracy", "accuracy", 9, ".3f"), (f"pass@{k}", "pass@k", 8, ".3f"),
            ("distinct", "distinct_correct", 9, ".2f"), ("effective", "effective_correct", 10, ".2f"),
            ("entropy", "entropy", 8, ".3f")]
    starts = [s.get("start") for s in summary.values()]
    rows = ({"warm start": starts[0]} if starts[0] and all(x == starts[0] for x in starts) else {}) | summary
    if all("paper_accuracy" in s for s in rows.values()):
        cols.append(("acc T=0.6", "paper_accuracy", 10, ".3f"))
    same = {c[0] for c in cols if len(rows) > 1 and len({format(s[c[1]], c[3]) for s in rows.values()}) == 1}
    shown = [c for c in cols if c[0] not in same]
    lines = [f"\nfinal eval ({n_prompts} prompts x {k} samples at T=1; grad clip {grad_clip}); accuracy = "
             f"mean over the samples = pass@1; effective = exp(entropy of π over correct answers):",
             f"{'algo':14s}" + "".join(f" {h:>{w}s}" for h, _, w, _ in shown)]
    for algo, s in rows.items():
        lines.append(f"{algo:14s}" + "".join(f" {s[key]:{w}{f}}" for _, key, w, f in shown))
    if same:
        first = next(iter(rows.values()))
        lines.append("the same for every run: " + ", ".join(f"{h} {first[key]:{f}}" for h, key, _, f in cols
                                                             if h in same))
    return "\n".join(lines)
