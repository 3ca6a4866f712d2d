"""
The FlowRL loss and the reward-maximizing baselines it is compared with, as pure functions of the
same tensors, side by side. Read beside docs/method.md (our account of
Zhu et al., arXiv 2509.15207), in its order: the target p* (M1), trajectory balance and
Proposition 1 (M2, M3), the practical loss (M4), the two forms we train (M6), the log Z head
(M4.4); then the baselines (M7).

Shapes: N sequences (rows, prompt-major: the G samples of a prompt are consecutive), T response
positions. logprobs, old_logprobs, ref_logprobs: (N, T) per-token log-probs of the sampled tokens
under the current, rollout and reference policies; mask: (N, T) true on response tokens (EOS
included); rewards: (N,).

What differs between the methods, in one place:
- FlowRL:      w · (log Z(x) + ℓ_θ(y) − β·r̂ − ℓ_ref(y))²        per sequence, mean over sequences
- GRPO:        −min(ρ_t·A, clip(ρ_t)·A) + c·k3_t, A = r̂          token mean, then sequence mean
- REINFORCE++: −min(ρ_t·A_t, clip(ρ_t)·A_t), A_t = batch-normalized (R − c·Σ_{s≥t} KL_s)   token mean
- PPO:         −min(ρ_t·A_t, clip(ρ_t)·A_t) + ½(V_t − R_t)², A_t from GAE on a learned value  token mean
"""

import math

import torch
import torch.nn as nn


def masked_sum(x, mask):
    """(N, T), (N, T) -> (N,)"""
    return (x * mask).sum(-1)


def masked_mean(x, mask):
    """(N, T), (N, T) -> (N,): the token mean over each row's mask."""
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def masked_whiten(x, mask, eps=1e-8, all_sum=None):
    """(x − mean) / (std + eps) with mean and unbiased std over the masked entries of the whole batch.
    all_sum: a function that sums a tensor over the processes (data parallel), so that the statistics
    are those of the global batch; None: this process's. x, mask: (N, T) -> (N, T)."""
    total = (lambda t: t) if all_sum is None else all_sum
    n = total(mask.sum())
    mean = total((x * mask).sum()) / n
    std = (total(((x - mean) * mask).pow(2).sum()) / (n - 1).clamp(min=1)).sqrt()
    return (x - mean) / (std + eps)


# ---------------------------------------------------------------------------------------------
# M1 The target p*(y|x) = π_ref(y|x)·exp(β·r(x, y)) / Z(x), exactly, where every answer can be listed

def target_log_partition(log_ref, rewards, beta):
    """The true log Z(x) = log Σ_y π_ref(y|x)·exp(β·r(x,y)), over every response y.
    log_ref, rewards: (M,) over all M responses -> scalar."""
    return torch.logsumexp(log_ref + beta * rewards, dim=0)


def binary_log_partition(ref_mass_correct, beta):
    """log Z for a 0/1 reward: Σ_y π_ref(y)·exp(β·r(y)) = e^β·m + (1 − m), m = π_ref's mass on the
    correct answers (which can be enumerated even where the wrong ones cannot)."""
    m = torch.as_tensor(ref_mass_correct, dtype=torch.float64)
    return torch.logaddexp(beta + m.log(), (1 - m).log())


def kl_to_target(log_pi, log_ref, rewards, beta, log_z):
    """KL(π ‖ p*) = Σ_y π(y)·(log π(y) − log π_ref(y) − β·r(y)) + log Z, summed over the given
    responses (all of π's support, or all but a pruned remainder). All (M,) -> scalar."""
    pi = log_pi.exp()
    return (pi * (log_pi - log_ref - beta * rewards)).sum() + pi.sum() * log_z


# ---------------------------------------------------------------------------------------------
# M2 Trajectory balance (Proposition 1) and M4 the practical loss

def tb_residual(log_z, l_theta, l_ref, rewards, beta):
    """The trajectory-balance residual δ = log Z(x) + ℓ_θ(y) − β·r − ℓ_ref(y) (docs/method.md M2).
    All (N,) -> (N,). Proposition 1: on-policy, E_y[∇_θ δ²] = 2·∇_θ KL(π_θ ‖ p*) when ℓ is the summed
    log-prob and r the raw reward."""
    return log_z + l_theta - beta * rewards - l_ref


def sequence_logprob(logprobs, mask, length_norm):
    """ℓ(y): the response's log-prob, the token mean over the mask (length_norm, the practical form,
    docs/method.md M4.2) or the sum log π(y|x) (Proposition 1's form, M2). (N, T), (N, T) -> (N,)."""
    return masked_mean(logprobs, mask) if length_norm else masked_sum(logprobs, mask)


def equal_reward_rows(rewards, group_size):
    """(N,) bool: the rows whose group's G rewards are all equal, where r̂ = 0 (docs/method.md M5).
    rewards: (N,) -> (N,)."""
    return (rewards.view(-1, group_size).std(1) == 0).repeat_interleave(group_size)


def group_normalize(rewards, group_size, eps=1e-6):
    """r̂ = (r − mean_group(r)) / (std_group(r) + eps) over consecutive groups of group_size rows,
    unbiased std (docs/method.md M4.1; the GRPO advantage). rewards: (N,) -> (N,)."""
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"group_size must be >= 2 and divide the {rewards.shape[0]} rows, got {group_size}")
    r = rewards.view(-1, group_size)                                                  # (P, G)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)).view(-1)


def importance_weight(logprobs, old_logprobs, mask, clip):
    """w = π_θ(y|x) / π_old(y|x) = exp(Σ_t log π_θ − log π_old) per sequence, detached, clamped to
    clip = (lo, hi) or not at all (None) (docs/method.md M4.3). Returns (w, w before the clamp), (N,)."""
    w_raw = masked_sum(logprobs.detach() - old_logprobs.detach(), mask).exp()       # (N,)
    return (w_raw if clip is None else w_raw.clamp(clip[0], clip[1])), w_raw


def flowrl_loss(logprobs, old_logprobs, ref_logprobs, mask, rewards, log_z, *, beta=15.0,
                clip=(0.8, 1.2), length_norm=True, flat=None, weight="ratio"):
    """The FlowRL objective (docs/method.md M4): the trajectory-balance loss with importance weights,

        δ_i = log Z_φ(x_i) + ℓ_θ(y_i) − β·r_i − ℓ_ref(y_i)               (tb_residual, M2)
        w_i = clamp(exp(Σ_t log π_θ(y_it) − log π_old(y_it)), *clip)      (importance_weight, detached)
        L   = (1/N) Σ_i w_i · δ_i²

    ℓ(y) is the token mean of the log-probs over the response mask if length_norm (the paper's
    practical form, M4.2), else their sum (the form for which Proposition 1 holds). Pass
    group-normalized rewards r̂ for the practical form, raw rewards for exact distribution matching
    (M6, FORMS). Gradients reach logprobs and log_z only; old_logprobs, ref_logprobs and rewards are
    constants. clip: (lo, hi) bounds of w, or None (the paper writes 1 ± ε without a value; [0.8, 1.2] is
    our default). weight="one": w ≡ 1 on whatever rows were sampled, trajectory balance as GFlowNets train
    it off-policy (docs/method.md M4.5); "ratio": the weight above. The prior in δ is whatever log-probs
    come as ref_logprobs: π_ref's, or π_old's for the authors' `old_policy` objective (--prior old).
    The official code takes the reward term as the token mean of the (constant per token)
    advantage, which equals r̂ here.

    logprobs, old_logprobs, ref_logprobs, mask: (N, T); rewards, log_z: (N,); flat: None or (N,) bool,
    the rows whose group's rewards are all equal (r̂ = 0 there: δ = log Z + ℓ_θ − ℓ_ref has no reward
    term, docs/method.md M5), for the metrics only.
    Returns (loss, stats) with stats: log_z, tb_residual (mean δ²), is_weight (mean w), clip_frac,
    logp (mean ℓ_θ), ref_logp (mean ℓ_ref), the sizes of δ's other terms (logp_minus_ref: mean ℓ_θ − ℓ_ref;
    beta_reward: mean |β·r|) and, given flat, flat_grad_share (Σ_flat w·|δ| / Σ w·|δ|: the share of the
    weight on the ∇ℓ_θ terms, 2·w·δ/N each, that comes from equal-reward groups) and flat_delta_abs (mean |δ|
    there)."""
    mask = mask.to(logprobs.dtype)
    l_theta = sequence_logprob(logprobs, mask, length_norm)                           # (N,)
    l_ref = sequence_logprob(ref_logprobs.detach(), mask, length_norm)                # (N,)
    delta = tb_residual(log_z, l_theta, l_ref, rewards.detach(), beta)                # (N,)
    if weight not in ("ratio", "one"):
        raise ValueError(f"weight must be 'ratio' or 'one', got {weight!r}")
    w, w_raw = importance_weight(logprobs, old_logprobs, mask, clip)                  # (N,)
    if weight == "one":
        w = w_raw = torch.ones_like(w)
    loss = (w * delta.pow(2)).mean()
    d, l_th = delta.detach(), l_theta.detach()
    stats = {"log_z": log_z.detach().mean(), "tb_residual": d.pow(2).mean(), "is_weight": w.mean(),
             "clip_frac": (w != w_raw).float().mean(), "logp": l_th.mean(), "ref_logp": l_ref.mean(),
             "logp_minus_ref": (l_th - l_ref).mean(), "beta_reward": (beta * rewards).abs().mean()}
    if flat is not None:
        pull = w * d.abs()                                                                # (N,)
        stats["flat_grad_share"] = (pull * flat).sum() / pull.sum().clamp(min=1e-30)
        stats["flat_delta_abs"] = (d.abs() * flat).sum() / flat.sum()                     # NaN: no such row
    stats = dict(zip(stats, torch.stack([v.float() for v in stats.values()]).tolist()))   # one device sync
    if flat is not None and math.isnan(stats["flat_delta_abs"]):
        del stats["flat_delta_abs"]                                                       # no equal-reward group
    return loss, stats


# ---------------------------------------------------------------------------------------------
# M6 The two forms of FlowRL we train: which reward and which pooling each name stands for

FORMS = {
    # the paper's practical loss (M4): group-normalized reward, token-mean log-probs, log Z from 0
    "flowrl": {"reward": "group_normalized", "length_norm": True, "init_log_z": False},
    # Proposition 1's form (M2): raw reward, summed log-probs, log Z started at log E_ref[exp(β·r)]
    "flowrl_exact": {"reward": "raw", "length_norm": False, "init_log_z": True},
}


def flowrl_form(algo, length_norm=None):
    """FORMS[algo], with --length_norm (None: the form's own) applied."""
    form = dict(FORMS[algo])
    if length_norm is not None:
        form["length_norm"] = length_norm
    return form


def log_partition_init(rewards, group_size, beta):
    """A starting log Z for the summed form (docs/method.md M6): at θ = ref the true value is
    log E_ref[exp(β·r)], estimated over each block of group_size rewards as log mean exp(β·r), a
    log-sum-exp, not the mean of β·r (Jensen makes that far too low). rewards: (N,) -> (N/group_size,).
    train.py passes the whole first batch as one block (group_size = N): the head's output bias is one
    value for every prompt."""
    r = rewards.view(-1, group_size).double()
    return (torch.logsumexp(beta * r, dim=1) - math.log(group_size)).float()


def group_log_z(logprobs, ref_logprobs, mask, rewards, beta, group_size, length_norm):
    """--logz group: no learned log Z; each group's own minimizer of Σ_g δ², the group mean of
    β·r + ℓ_ref − ℓ_θ, detached (on-policy a baseline, docs/method.md M3). All (N, T) / (N,) -> (N,)."""
    m = mask.to(logprobs.dtype)
    l_ref = sequence_logprob(ref_logprobs, m, length_norm)                            # (N,)
    l_theta = sequence_logprob(logprobs.detach(), m, length_norm)                     # (N,)
    est = beta * rewards + l_ref - l_theta                                            # (N,)
    return est.view(-1, group_size).mean(1).repeat_interleave(group_size)


# ---------------------------------------------------------------------------------------------
# M4.4 The learned log-partition log Z_φ(x)

class LogZHead(nn.Module):
    """log Z_φ(x) (docs/method.md M4.4): an MLP on the mean of the final-layer hidden states of the
    prompt tokens, [Linear(H,H) → GELU → LayerNorm(H) → Dropout] × 2 → Linear(H,1). The pooled states
    are not detached, so the head's gradient reaches the trunk too. Its own parameters:
    LogZHead.parameters(), for an optimizer group with its own lr. init: the starting log Z (the
    last bias; the last weight starts small, not zero, so that every layer gets a gradient from the
    first step). The head computes in float32 whatever the trunk's dtype (log Z is near 14 in the
    summed form, where a bfloat16 step is 0.0625)."""

    def __init__(self, n_embd, dropout=0.1, init=0.0):
        super().__init__()
        layers = []
        for _ in range(2):
            layers += [nn.Linear(n_embd, n_embd), nn.GELU(), nn.LayerNorm(n_embd), nn.Dropout(dropout)]
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(n_embd, 1)
        nn.init.normal_(self.out.weight, std=0.01)  # start near log Z = init for every prompt
        nn.init.constant_(self.out.bias, init)

    def forward(self, hidden, prompt_mask):
        """hidden: (N, Tp, H) final-layer states; prompt_mask: (N, Tp) true on real prompt tokens.
        Returns log Z: (N,)."""
        with torch.autocast(hidden.device.type, enabled=False):                      # fp32 under bf16 autocast
            h = hidden.to(self.out.weight.dtype)
            m = prompt_mask[..., None].to(h.dtype)                                     # (N, Tp, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)                            # (N, H)
            return self.out(self.mlp(pooled)).sum(-1)               # (N,): a new tensor, not a view (FSDP)


class LogZTable(nn.Module):
    """An ablation of LogZHead (--logz table): one free log Z per prompt, looked up by an integer key."""

    def __init__(self, n_prompts, init=0.0):
        super().__init__()
        self.table = nn.Parameter(torch.full((n_prompts,), float(init)))

    def forward(self, keys):
        return self.table[keys]                                                       # (N,)


# ---------------------------------------------------------------------------------------------
# M7 The reward maximizers. All share the token-level PPO clipped surrogate.

def clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps, clip_eps_high=None):
    """Per-token PPO objective to minimize: −min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A), ρ = π_θ/π_old per token
    (ε_high = ε unless given: DAPO's clip-higher). advantages: (N, T) or (N, 1).
    Returns (loss (N, T), clipped (N, T) bool: where the clip binds)."""
    ratio = (logprobs - old_logprobs.detach()).exp()                                  # (N, T)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + (clip_eps if clip_eps_high is None else clip_eps_high)) * advantages
    return -torch.min(unclipped, clipped), clipped < unclipped


def k3_kl(logprobs, ref_logprobs):
    """The k3 estimator of KL(π_θ ‖ π_ref) per token: exp(q) − q − 1, q = log π_ref − log π_θ
    (non-negative, unbiased on-policy; Schulman's 'approximating KL' note, used by GRPO)."""
    q = ref_logprobs.detach() - logprobs
    return q.exp() - q - 1


def grpo_loss(logprobs, old_logprobs, ref_logprobs, mask, advantages, *, clip_eps=0.2, kl_coef=0.0):
    """GRPO (Shao et al. 2024): the sequence advantage A_i = r̂_i (group_normalize), the token-level
    clipped surrogate, plus kl_coef·k3 KL to the reference. Aggregation as in the GRPO paper:
    the token mean within each sequence, then the mean over sequences. advantages: (N,)."""
    mask = mask.to(logprobs.dtype)
    pg, clipped = clipped_surrogate(logprobs, old_logprobs, advantages.detach()[:, None], clip_eps)
    kl = k3_kl(logprobs, ref_logprobs)                                               # (N, T)
    loss = masked_mean(pg + kl_coef * kl, mask).mean()
    return loss, {"kl_ref": (masked_mean(kl.detach(), mask)).mean().item(),
                  "clip_frac": (masked_sum(clipped.to(mask.dtype), mask).sum() / mask.sum()).item()}


def group_center(rewards, group_size):
    """r − mean_group(r) over consecutive groups of group_size rows, no division by the std (Dr. GRPO's
    advantage). rewards: (N,) -> (N,)."""
    r = rewards.view(-1, group_size)                                                  # (P, G)
    return (r - r.mean(1, keepdim=True)).view(-1)


def dr_grpo_loss(logprobs, old_logprobs, ref_logprobs, mask, advantages, *, budget, clip_eps=0.2, kl_coef=0.0):
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like Training"); from GRPO it changes: the
    advantage r − mean_group(r) (group_center, no std), and each sequence's token sum divided by a
    constant, the generation budget, instead of by its own length. advantages: (N,); budget: int."""
    mask = mask.to(logprobs.dtype)
    pg, clipped = clipped_surrogate(logprobs, old_logprobs, advantages.detach()[:, None], clip_eps)
    kl = k3_kl(logprobs, ref_logprobs)                                               # (N, T)
    loss = (masked_sum(pg + kl_coef * kl, mask) / budget).mean()
    return loss, {"kl_ref": (masked_mean(kl.detach(), mask)).mean().item(),
                  "clip_frac": (masked_sum(clipped.to(mask.dtype), mask).sum() / mask.sum()).item()}


def dapo_loss(logprobs, old_logprobs, mask, advantages, *, clip_eps=0.2, clip_eps_high=0.28, token_count=None):
    """DAPO (Yu et al. 2025); from GRPO it changes: clip-higher (ρ clipped to [1 − 0.2, 1 + 0.28]), the
    token mean over the whole batch instead of per sequence, and no KL term (its dynamic sampling is
    train.py's --drop_flat_groups). advantages: (N,), group-normalized; token_count: as in
    reinforce_pp_loss."""
    mask = mask.to(logprobs.dtype)
    pg, clipped = clipped_surrogate(logprobs, old_logprobs, advantages.detach()[:, None], clip_eps, clip_eps_high)
    loss = (pg * mask).sum() / (mask.sum() if token_count is None else token_count)
    return loss, {"clip_frac": ((clipped.to(mask.dtype) * mask).sum() / mask.sum()).item()}


def gspo_loss(logprobs, old_logprobs, mask, advantages, *, clip_low=3e-4, clip_high=4e-4):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"); from GRPO it changes: one
    importance ratio per sequence, s = (π_θ(y)/π_old(y))^(1/|y|) = exp(mean_t (log π_θ − log π_old)),
    clipped to [1 − 3e-4, 1 + 4e-4] (the paper's ranges), in −min(s·A, clip(s)·A), mean over sequences.
    On-policy (s = 1) its gradient is GRPO's. advantages: (N,), group-normalized."""
    mask = mask.to(logprobs.dtype)
    s = masked_mean(logprobs - old_logprobs.detach(), mask).exp()                     # (N,)
    a = advantages.detach()
    unclipped, clipped = s * a, s.clamp(1 - clip_low, 1 + clip_high) * a
    loss = -torch.min(unclipped, clipped).mean()
    return loss, {"clip_frac": (clipped < unclipped).float().mean().item()}


def reinforce_pp_advantages(rewards, old_logprobs, ref_logprobs, mask, kl_coef=0.0, all_sum=None):
    """REINFORCE++ (Hu 2025): per-token reward −kl_coef·(log π_old − log π_ref) plus the outcome reward
    on the last response token; the return-to-go (γ = 1) is the advantage, normalized over every
    response token of the whole batch (not per group; all_sum: across processes, masked_whiten). All
    inputs detached. Returns (N, T)."""
    mask = mask.to(old_logprobs.dtype)
    token_r = -kl_coef * (old_logprobs - ref_logprobs).detach() * mask               # (N, T)
    last = (mask.sum(-1) - 1).clamp(min=0).long()                                     # (N,)
    token_r = token_r.scatter_add(1, last[:, None], rewards.detach()[:, None].to(token_r.dtype))
    returns = token_r.flip(-1).cumsum(-1).flip(-1)                                   # Σ_{s≥t} r_s
    return masked_whiten(returns, mask, all_sum=all_sum) * mask


def reinforce_pp_loss(logprobs, old_logprobs, mask, advantages, *, clip_eps=0.2, token_count=None):
    """REINFORCE++ policy loss: the clipped surrogate with per-token advantages
    (reinforce_pp_advantages, which hold the KL penalty), the token mean over the whole batch.
    token_count: the divisor of that mean (default: mask.sum()); data parallel passes the global
    count over the number of processes, whose gradients are averaged, so that the result is the
    token mean over the global batch."""
    mask = mask.to(logprobs.dtype)
    pg, clipped = clipped_surrogate(logprobs, old_logprobs, advantages.detach(), clip_eps)
    loss = (pg * mask).sum() / (mask.sum() if token_count is None else token_count)
    return loss, {"clip_frac": ((clipped.to(mask.dtype) * mask).sum() / mask.sum()).item()}


class ValueHead(nn.Module):
    """PPO's critic: a linear read-out of the policy's final-layer hidden state (a shared trunk), in
    float32 whatever the trunk's dtype."""

    def __init__(self, n_embd):
        super().__init__()
        self.out = nn.Linear(n_embd, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden):
        """hidden: (N, T, H), the states from which each response token is predicted -> (N, T)."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.out(hidden.to(self.out.weight.dtype)).sum(-1)          # (N, T), not a view (FSDP)


def gae(rewards, values, mask, gamma=1.0, lam=0.95, token_rewards=None):
    """Generalized advantage estimation (Schulman et al. 2016) with the outcome reward on the last
    response token, plus token_rewards (N, T) if given (e.g. a −c·KL penalty per token):
    δ_t = r_t + γ·V_{t+1} − V_t (V after the end = 0),
    A_t = Σ_k (γλ)^k δ_{t+k}; returns R_t = A_t + V_t. rewards: (N,); values, mask: (N, T).
    All detached. Returns (advantages (N, T), returns (N, T))."""
    mask = mask.to(values.dtype)
    values = values.detach() * mask
    N, T = values.shape
    last = (mask.sum(-1) - 1).clamp(min=0).long()
    token_r = torch.zeros_like(values).scatter(1, last[:, None], rewards.detach()[:, None].to(values.dtype))
    if token_rewards is not None:
        token_r = token_r + token_rewards.detach() * mask
    adv = torch.zeros_like(values)
    running = torch.zeros(N, dtype=values.dtype, device=values.device)
    for t in reversed(range(T)):                 # T is the response length: a short loop
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = token_r[:, t] + gamma * next_v - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv, (adv + values) * mask


def ppo_loss(logprobs, old_logprobs, mask, advantages, values, returns, *, clip_eps=0.2, vf_coef=0.5,
             token_count=None, all_sum=None):
    """PPO for language models, in its simplest faithful form: the token-level clipped surrogate with
    GAE advantages (gae, then whitened over the batch's response tokens) from a learned value head
    on the shared trunk, plus vf_coef · ½(V_t − R_t)² (no value clipping). Token mean over the batch.
    values: (N, T) with gradients; advantages, returns: (N, T) constants. token_count and all_sum:
    the global batch under data parallel (reinforce_pp_loss, masked_whiten)."""
    mask = mask.to(logprobs.dtype)
    n = mask.sum() if token_count is None else token_count
    a = masked_whiten(advantages.detach(), mask, all_sum=all_sum)
    pg, clipped = clipped_surrogate(logprobs, old_logprobs, a, clip_eps)
    pg_loss = (pg * mask).sum() / n
    v_loss = 0.5 * ((values - returns.detach()).pow(2) * mask).sum() / n
    return pg_loss + vf_coef * v_loss, {"value_loss": v_loss.item(),
                                        "clip_frac": ((clipped.to(mask.dtype) * mask).sum() / mask.sum()).item()}


# ---------------------------------------------------------------------------------------------
# M10 After the paper: GFlowRL (as read from its text by an independent implementation) and the
# authors' own token-level objectives (Xuekai-Zhu/verl_FlowRL, branches async-flowrl and no-log-z)

def gflowrl_loss(logprobs, old_logprobs, ref_logprobs, mask, rewards, *, group_size, beta=8.0,
                 gap_clip=(0.2, 0.28), weight_cap=1.28, z_length_norm=True, ratio="geometric"):
    """GFlowRL ("Scaling Distribution-Matching RL to Large Language Models", arXiv 2607.13394), its Eq. 4,
    6, 7, 8 as an independent reading gives them (docs/method.md M10; its own code is not published):

        log Z(x) = (1/G) Σ_j [β·r_j + ℓ_ref(y_j) − ℓ_old(y_j)]          Eq. 4, detached (a group estimate)
        g_i      = log Z(x) + ℓ_old(y_i) − ℓ_ref(y_i) − β·r_i             Eq. 6, the flow gap (a constant)
        g̃_i      = clip(g_i, −ε_low, +ε_high)                             Eq. 7
        L        = (1/N) Σ_i w_i·(g̃_i + ℓ_θ(y_i) − ℓ_old(y_i))²           Eq. 8
        w_i      = min(ρ_i, weight_cap), detached; ρ_i = exp(ℓ_θ − ℓ_old) (ratio="geometric": ℓ the token
                   mean, the geometric-mean ratio) or π_θ(y_i)/π_old(y_i) (ratio="sequence": summed log-probs)

    ℓ is the token mean of the log-probs over the mask in Eq. 6 and 8 (the paper's 1/|y|); z_length_norm:
    the same in Eq. 4 (the reading's choice; the paper's Eq. 4 has no 1/|y|), else summed there. Unclipped,
    g_i + ℓ_θ − ℓ_old is FlowRL's δ with a group log Z; on-policy (ℓ_θ = ℓ_old, w = 1) the gradient is
    2·g̃_i·∇ℓ_θ(y_i)/N. rewards: raw (0/1 here; the paper's β = 8 is for 0/1 rewards). gap_clip: (ε_low,
    ε_high) or None (no clip). All (N, T) / (N,); gradients reach logprobs only. Returns (loss, stats):
    log_z (mean Eq. 4 estimate), tb_residual (mean squared unclipped residual), is_weight (mean w),
    clip_frac (share of w capped), gap_abs (mean |g|), gap_clip_frac (share of g clipped)."""
    if ratio not in ("geometric", "sequence"):
        raise ValueError(f"ratio must be 'geometric' or 'sequence', got {ratio!r}")
    m = mask.to(logprobs.dtype)
    l_theta = masked_mean(logprobs, m)                                                # (N,)
    l_old, l_ref = masked_mean(old_logprobs.detach(), m), masked_mean(ref_logprobs.detach(), m)
    z_old = l_old if z_length_norm else masked_sum(old_logprobs.detach(), m)
    z_ref = l_ref if z_length_norm else masked_sum(ref_logprobs.detach(), m)
    r = rewards.detach().to(l_theta.dtype)
    log_z = (beta * r + z_ref - z_old).view(-1, group_size).mean(1).repeat_interleave(group_size)   # Eq. 4
    gap = log_z + l_old - l_ref - beta * r                                            # Eq. 6, (N,)
    gap_c = gap if gap_clip is None else gap.clamp(-gap_clip[0], gap_clip[1])         # Eq. 7
    log_rho = (l_theta if ratio == "geometric" else masked_sum(logprobs, m)).detach() - \
        (l_old if ratio == "geometric" else masked_sum(old_logprobs.detach(), m))
    rho = log_rho.exp()
    w = rho.clamp(max=weight_cap)                                                     # (N,)
    loss = (w * (gap_c + l_theta - l_old).pow(2)).mean()                              # Eq. 8
    d = (gap + l_theta - l_old).detach()
    stats = {"log_z": log_z.mean(), "tb_residual": d.pow(2).mean(), "is_weight": w.mean(),
             "clip_frac": (rho > weight_cap).float().mean(), "gap_abs": gap.abs().mean(),
             "gap_clip_frac": (gap != gap_c).float().mean()}
    return loss, dict(zip(stats, torch.stack([v.float() for v in stats.values()]).tolist()))


def flowrl_token_loss(logprobs, old_logprobs, mask, advantages, *, beta=15.0, clip=(0.8, 1.28), old_prior=True,
                      token_count=None):
    """The authors' token-level objectives (Xuekai-Zhu/verl_FlowRL, recipe/flowrl/flowrl_objectives.py::
    compute_flowrl_old_policy_no_log_z_token_level; docs/method.md M10), a squared residual per token:

        e_t = log π_θ(y_t) − β·A − log π_old(y_t)     old_prior=True  (branch async-flowrl: flowrl_token_old)
        e_t = log π_θ(y_t) − β·A                      old_prior=False (branch no-log-z: flowrl_token)
        L   = Σ_t w_t·e_t² / (tokens in the batch),   w_t = clamp(π_θ(y_t)/π_old(y_t), *clip), detached

    with A = r − mean_group(r) per sequence (group_center, no std), no log Z and no π_ref. On-policy
    (π_θ = π_old, w = 1) the gradient is −2β·A·∇log π_θ(y_t) per token with old_prior (token-level
    REINFORCE with a group-mean baseline), and adds 2·log π_θ(y_t)·∇log π_θ(y_t) without it: a push of
    every sampled token's probability toward 1 (A = 0 in all-equal groups leaves that term alone).
    advantages: (N,); token_count: the divisor of the token mean (default: mask.sum()). Returns (loss,
    stats): clip_frac (share of tokens whose weight is clamped), is_weight (mean w), residual (mean e_t)."""
    m = mask.to(logprobs.dtype)
    e = logprobs - beta * advantages.detach()[:, None].to(logprobs.dtype)             # (N, T)
    if old_prior:
        e = e - old_logprobs.detach()
    ratio = (logprobs.detach() - old_logprobs.detach()).clamp(-20.0, 20.0).exp()      # (N, T)
    w = ratio.clamp(clip[0], clip[1])
    n = m.sum() if token_count is None else token_count
    loss = (w * e.pow(2) * m).sum() / n
    stats = {"clip_frac": ((w != ratio).float() * m).sum() / m.sum(), "is_weight": (w * m).sum() / m.sum(),
             "residual": (e.detach() * m).sum() / m.sum()}
    return loss, dict(zip(stats, torch.stack([v.float() for v in stats.values()]).tolist()))
