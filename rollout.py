"""
Batched group sampling: G answers for each prompt, in one loop over positions (never over rows).

Row order is prompt-major: rows i*G .. i*G+G-1 are the G samples of prompt i, the order in which
flowrl.group_normalize reads groups. Each prompt is prefilled once and its KV cache shared by its
G samples.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import GroupCache, Prefix

SHARE_PROMPT_MIN = 32   # prompts of at least this many tokens: decode with each prompt's keys read once per group


@dataclass
class Rollout:
    prompt: torch.Tensor        # (N, Tp) long, left-padded prompts, one row per sample
    prompt_mask: torch.Tensor   # (N, Tp) bool, true on real prompt tokens
    response: torch.Tensor      # (N, T) long, padded with eos_id after the first EOS
    mask: torch.Tensor          # (N, T) bool, true on generated tokens, the EOS included
    logprobs: torch.Tensor      # (N, T) log-prob of each sampled token under softmax(logits / T); 0 where masked
    eos_id: int                 # the end-of-sequence id that pads responses
    stop_ids: tuple = ()        # every id that ends a response (empty: eos_id alone)

    def select(self, rows):
        """The sub-rollout of the given rows (a LongTensor or slice), e.g. a minibatch of whole groups."""
        return Rollout(self.prompt[rows], self.prompt_mask[rows], self.response[rows], self.mask[rows],
                       self.logprobs[rows], self.eos_id, self.stop_ids)

    @property
    def finished(self):
        """(N,) bool: the row ended with a stop id (false: cut at max_new_tokens)."""
        last = self.mask.sum(-1) - 1                                                 # (N,)
        ended = self.response.gather(1, last.clamp(min=0)[:, None])[:, 0]
        stops = torch.tensor(self.stop_ids or (self.eos_id,), device=ended.device)
        return (last >= 0) & torch.isin(ended, stops)


def concat_rollouts(parts):
    """One Rollout of the rows of several (e.g. the groups kept from several sampling rounds), in order:
    prompts left-padded to the longest (pad = eos_id, prompt_mask false), responses right-padded with
    eos_id (mask false, logprob 0), as generate pads them."""
    if not parts:
        raise ValueError("concat_rollouts needs at least one rollout")
    Tp = max(r.prompt.shape[1] for r in parts)
    T = max(r.response.shape[1] for r in parts)
    eos = parts[0].eos_id
    left = lambda x, v: F.pad(x, (Tp - x.shape[1], 0), value=v)                        # (n, Tp)
    right = lambda x, v: F.pad(x, (0, T - x.shape[1]), value=v)                        # (n, T)
    return Rollout(torch.cat([left(r.prompt, eos) for r in parts]),
                   torch.cat([left(r.prompt_mask, False) for r in parts]),
                   torch.cat([right(r.response, eos) for r in parts]), torch.cat([right(r.mask, False) for r in parts]),
                   torch.cat([right(r.logprobs, 0.0) for r in parts]), eos, parts[0].stop_ids)


def left_pad(prompts, pad_id, device):
    """prompts: list of token-id lists -> ids (P, Tp) long and valid (P, Tp) bool, left-padded."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    Tp = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (Tp - len(p)) + list(p) for p in prompts], dtype=torch.long)        # (P, Tp)
    valid = torch.tensor([[False] * (Tp - len(p)) + [True] * len(p) for p in prompts])              # (P, Tp)
    return ids.to(device), valid.to(device)


def sample_token(logits, temperature, top_p, generator, u=None):
    """logits: (N, V) -> (token (N,), logprob (N,)) where logprob is under softmax(logits / temperature),
    before top-p truncation (what the losses use as log pi_old). temperature=0: greedy, with the
    logprob under softmax(logits). u: (N, 1) uniforms, one per row (None: drawn from generator)."""
    if temperature == 0:
        logp = F.log_softmax(logits, dim=-1)                                         # (N, V)
        token = logits.argmax(-1)
        return token, logp.gather(1, token[:, None])[:, 0]
    if temperature != 1.0:                      # x / 1.0 is x: no (N, V) copy at the usual temperature
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)                                             # (N, V)
    probs = logp.exp()
    if u is None:
        u = torch.rand(probs.shape[0], 1, device=probs.device, generator=generator)  # one uniform per row
    if top_p < 1.0:
        # nucleus: the smallest set of most likely tokens whose mass reaches top_p
        sorted_p, order = probs.sort(dim=-1, descending=True)                       # (N, V)
        keep = (sorted_p.cumsum(-1) - sorted_p) < top_p                              # mass before token < top_p
        cdf = (sorted_p * keep).cumsum(-1)                                           # (N, V)
        pick = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=probs.shape[1] - 1)
        token = order.gather(1, pick)[:, 0]
    else:
        cdf = probs.cumsum(-1)                                                       # (N, V)
        token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=probs.shape[1] - 1)[:, 0]
    return token, logp.gather(1, token[:, None])[:, 0]


def generate(model, prompts, *, num_samples, max_new_tokens, temperature=1.0, top_p=1.0, eos_id,
             stop_ids=None, generator=None, compile=False, compact_every=8, share_prompt=None):
    """Sample num_samples responses for each prompt (a list of token-id lists). A row ends at the first
    of its tokens in stop_ids (default: eos_id alone; a checkpoint's generation_config may list several);
    eos_id pads the prompts on the left and the responses after their end. compile: decode with
    model.compiled_decode_step (static shapes; CUDA graphs on CUDA), else the eager forward.
    Finished rows leave the batch every compact_every steps (compact_rows; 0: never). Each step draws one
    uniform per row of the whole batch, running or not, so a row's tokens do not depend on when others
    left. share_prompt: decode with a GroupCache, each prompt's keys and values read once for its G
    samples (eager only); None: when G > 1 and the prompts are at least SHARE_PROMPT_MIN tokens long.
    Equal to the copied-prompt decode up to float rounding (tests/test_rollout.py).
    Returns a Rollout of N = len(prompts) * num_samples rows, prompt-major."""
    check_sampling(num_samples, max_new_tokens, temperature, top_p, compact_every)
    device = next(model.parameters()).device
    G = num_samples
    ids, valid = left_pad(prompts, eos_id, device)                                  # (P, Tp)
    P, Tp = ids.shape
    if Tp + max_new_tokens > model.config.block_size:
        raise ValueError(f"a prompt of {Tp} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
                         f"block_size={model.config.block_size}: lower --max_new_tokens")
    stops = torch.tensor(tuple(stop_ids) if stop_ids else (eos_id,), device=device)
    N = P * G
    if share_prompt is None:
        share_prompt = G > 1 and Tp >= SHARE_PROMPT_MIN and not compile
    if share_prompt and compile:
        raise ValueError("share_prompt decodes eagerly: use compile=False with it")
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        cache, logits = prefill(model, ids, valid, G, max_new_tokens, share_prompt, compile)   # logits: (N, V)
        response = torch.full((N, max_new_tokens), eos_id, dtype=torch.long, device=device)
        mask = torch.zeros(N, max_new_tokens, dtype=torch.bool, device=device)
        logprobs = torch.zeros(N, max_new_tokens, device=device)
        done = torch.zeros(N, dtype=torch.bool, device=device)
        step = model.compiled_decode_step() if compile else None
        slots = torch.arange(Tp, Tp + max_new_tokens, device=device)                 # the cache slot of each step
        rows, n = torch.arange(N, device=device), N      # the batch's rows: rows[:n] real, rows[n:] padding
        for t in range(max_new_tokens):
            u = None if temperature == 0 else torch.rand(N, 1, device=device, generator=generator)   # (N, 1)
            token, lp = sample_token(logits, temperature, top_p, generator, None if u is None else u[rows])  # (B,)
            live, was = rows[:n], done[rows[:n]]
            response[live, t] = token[:n].masked_fill(was, eos_id)
            mask[live, t] = ~was
            logprobs[live, t] = lp[:n].masked_fill(was, 0.0)
            done[live] = was | torch.isin(token[:n], stops)
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            if compact_every and (t + 1) % compact_every == 0:
                keep, running = compact_rows(rows, n, done, compile)                # positions in this batch
                if keep is not None:
                    cache, token, rows, n = cache.select(keep), token[keep], rows[keep], running
            if step is not None:                                                     # static shapes
                logits = step(token, cache, slots[t:t + 1])                              # (B, V)
                cache.length = Tp + t + 1                    # slots filled (decode_step reads no Python int)
            else:
                logits = model(token[:, None], cache=cache)[:, -1]                       # (B, V)
    model.train(was_training)
    T = t + 1  # trim the columns no row reached
    out = Rollout(prompt=ids.repeat_interleave(G, dim=0).clone(),
                  prompt_mask=valid.repeat_interleave(G, dim=0).clone(),
                  response=response[:, :T].clone(), mask=mask[:, :T].clone(),
                  logprobs=logprobs[:, :T].clone(), eos_id=eos_id, stop_ids=tuple(stops.tolist()))
    return out


def check_sampling(num_samples, max_new_tokens, temperature, top_p, compact_every):
    """generate's arguments, each a one-line ValueError naming it."""
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError("num_samples and max_new_tokens must be >= 1")
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
    if compact_every < 0:
        raise ValueError("compact_every must be >= 0 (0: finished rows stay in the batch)")


def prefill(model, ids, valid, G, max_new_tokens, share_prompt, compile):
    """One forward over each prompt (ids, valid: (P, Tp)), then the cache the G samples of each decode
    from: a GroupCache holding the prompt once (share_prompt), or a copy of it per row. Returns
    (cache, the next-token logits of every row, (P x G, V))."""
    P, Tp = ids.shape
    length = Tp + max_new_tokens
    if compile:                                 # one cache length for many prompt lengths: no recompilation
        length = min(model.config.block_size, 64 * math.ceil(length / 64))
    cache = model.make_cache(P, Tp if share_prompt else length)
    logits = model(ids, valid=valid, cache=cache, logits_from=Tp - 1)[:, -1]        # (P, V)
    if share_prompt:                                                                 # the group reads one copy
        cache = GroupCache(cache, G, max_new_tokens)
    else:                                                                            # a copy per row
        cache = cache.select(torch.arange(P, device=ids.device).repeat_interleave(G))   # (P x G, ...)
    return cache, logits.repeat_interleave(G, dim=0)


def compact_rows(rows, n, done, compile):
    """Which positions of the decode batch to keep when finished rows leave it: the running ones, in
    order (eager: whenever one has finished); compiled: only once they fit half the batch, then padded
    with copies of the last running row up to a power of two (the compiled step sees log2 N shapes at
    most). rows: (B,) the batch's original row ids, the first n real, the rest padding; done: (N,) bool.
    Returns (the positions to keep (B',) long, how many of them are running rows), or (None, n) to keep
    the batch as it is."""
    running = (~done[rows[:n]]).nonzero()[:, 0]                                      # (n',)
    k = running.numel()
    if k == rows.numel() or k == 0:
        return None, n
    if not compile:
        return running, k
    size = 1 << (k - 1).bit_length()                                                 # next power of two >= k
    if size > rows.numel() // 2:
        return None, n
    return torch.cat([running, running[-1:].expand(size - k)]), k


def from_tokens(prompts, responses, eos_id, device="cpu"):
    """A Rollout for given responses (teacher forcing), one row per (prompt, response) pair: to score
    answers exactly with sequence_logprobs. responses include their EOS where they have one;
    logprobs are left at 0."""
    ids, valid = left_pad(prompts, eos_id, device)                                  # (N, Tp)
    T = max(len(r) for r in responses)
    response = torch.tensor([list(r) + [eos_id] * (T - len(r)) for r in responses], dtype=torch.long)  # (N, T)
    mask = torch.tensor([[True] * len(r) + [False] * (T - len(r)) for r in responses])               # (N, T)
    return Rollout(ids, valid, response.to(device), mask.to(device), torch.zeros(response.shape, device=device),
                   eos_id)


def shared_prompts(rollout):
    """Runs of consecutive rows with the same prompt (a group's G samples): first (P,) long, the first row
    of each run, and inverse (N,) long, the run of each row, so that prompt[first][inverse] == prompt."""
    key = torch.cat([rollout.prompt, rollout.prompt_mask.long()], dim=1)            # (N, Tp)
    new = torch.ones(key.shape[0], dtype=torch.bool, device=key.device)             # (N,)
    new[1:] = (key[1:] != key[:-1]).any(-1)
    return new.nonzero()[:, 0], new.long().cumsum(0) - 1


def sequence_logprobs(model, rollout, temperature=1.0, return_hidden=False, with_entropy=True):
    """Recompute, with gradients, the per-token log-probs of the rollout's responses (N, T), and the
    per-token entropy of the full next-token distribution (N, T) (a metric: computed outside the
    autograd graph), both under softmax(logits / temperature) and 0 where masked. With return_hidden,
    also the final-layer hidden states (N, Tp + T, C), for the log Z and value heads. with_entropy=False
    skips the entropy (None).
    Two forwards: each distinct prompt once (P rows; a group's G rows share one), then the responses
    (N rows) attending to their prompt's keys (model.Prefix): the same values as one forward over the
    N concatenated rows, with the prompt positions computed P times instead of N (docs/method.md M9)."""
    Tp = rollout.prompt.shape[1]
    first, inverse = shared_prompts(rollout)                                         # (P,), (N,)
    prefix = Prefix(rollout.prompt_mask[first])
    last, h_prompt = model(rollout.prompt[first], valid=rollout.prompt_mask[first], prefix=prefix,
                           return_hidden=True, logits_from=Tp - 1)                   # (P, 1, V), (P, Tp, C)
    logits, h = model(rollout.response, prefix=prefix.select(inverse), return_hidden=True)  # (N, T, V), (N, T, C)
    # the first response token is predicted by the prompt's last position, the others by the response's own:
    # two pieces, scored apart (a cat of the (N, T, V) logits would copy them all once more)
    pieces = (last.index_select(0, inverse), logits[:, :-1])                         # (N, 1, V), (N, T-1, V)
    targets = (rollout.response[:, :1], rollout.response[:, 1:])                     # (N, 1), (N, T-1)
    logprobs, entropy = [], []
    for x, y in zip(pieces, targets):
        if temperature > 0 and temperature != 1.0:   # x / 1.0 is x: no (N, T, V) copy in the graph at T = 1
            x = x / temperature
        logp_all = F.log_softmax(x, dim=-1)                                          # (N, t, V)
        logprobs.append(logp_all.gather(2, y[..., None])[..., 0])                    # (N, t)
        if with_entropy:                        # H = −Σ_v p·log p, 8 rows at a time: no extra (N, t, V) tensor
            with torch.no_grad():
                entropy.append(torch.cat([-(lp.exp() * lp).sum(-1) for lp in logp_all.split(8)]))
    logprobs = torch.cat(logprobs, dim=1) * rollout.mask                             # (N, T)
    entropy = torch.cat(entropy, dim=1) * rollout.mask if with_entropy else None     # (N, T)
    if not return_hidden:
        return logprobs, entropy
    return logprobs, entropy, torch.cat([h_prompt.index_select(0, inverse), h], dim=1)   # h: (N, Tp+T, C)


@torch.no_grad()
def chunked_logprobs(model, rollout, temperature, rows, with_entropy=True):
    """sequence_logprobs without gradients, `rows` rows at a time: bounds the (rows, T, vocab) logits,
    which for a 150k vocabulary are what fills a GPU first. Returns (logprobs, entropy), (N, T) each;
    entropy None with with_entropy=False (the reference's: not needed)."""
    parts = [sequence_logprobs(model, rollout.select(slice(s, s + rows)), temperature, with_entropy=with_entropy)
             for s in range(0, rollout.mask.shape[0], rows)]
    return torch.cat([p[0] for p in parts]), (torch.cat([p[1] for p in parts]) if with_entropy else None)


@torch.no_grad()
def enumerate_responses(model, prompt, *, eos_id, max_new_tokens, min_prob=1e-7, max_frontier=4096,
                        batch_size=4096):
    """The policy's exact probability of every response to one prompt (a token-id list), by expanding
    the token tree breadth first with the KV cache: the frontier holds prefixes; each step scores all
    their children in batched forwards. A response ends at EOS, or at max_new_tokens (a cut
    response, as generate makes them). A prefix with probability below min_prob is not expanded and
    its mass is reported as `pruned` (min_prob=0 expands everything).
    Returns (responses: list of token tuples, logp: (M,) float64 tensor of log π(y|x), pruned: float)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    cache = model.make_cache(1, len(prompt) + max_new_tokens)
    logits = model(torch.tensor([prompt], device=device), cache=cache)[:, -1]       # (F=1, V)
    prefixes = [()]
    prefix_logp = torch.zeros(1, dtype=torch.float64, device=device)                 # (F,)
    responses, logps, pruned = [], [], 0.0
    for depth in range(max_new_tokens):
        child = prefix_logp[:, None] + F.log_softmax(logits.double(), -1)            # (F, V)
        responses += [p + (eos_id,) for p in prefixes]                               # ends with EOS
        logps.append(child[:, eos_id].clone())
        child[:, eos_id] = -math.inf
        last = depth == max_new_tokens - 1
        keep = torch.isfinite(child) if min_prob <= 0 else child >= math.log(min_prob)
        if max_frontier is not None and int(keep.sum()) > max_frontier:
            cutoff = child.flatten().topk(max_frontier).values[-1]
            keep &= child >= cutoff
        pruned += child[torch.isfinite(child) & ~keep].exp().sum().item()
        parent, token = keep.nonzero(as_tuple=True)                                   # (F',), (F',)
        prefixes = [prefixes[i] + (t,) for i, t in zip(parent.tolist(), token.tolist())]
        prefix_logp = child[parent, token]
        if last:                                                                      # cut responses
            responses += prefixes
            logps.append(prefix_logp)
            break
        if not prefixes:
            break
        caches, chunks = [], []
        for s in range(0, len(prefixes), batch_size):                                # children in batches
            c = cache.select(parent[s:s + batch_size])
            chunks.append(model(token[s:s + batch_size, None], cache=c)[:, -1])      # (b, V)
            caches.append(c)
        logits = torch.cat(chunks)                                                    # (F', V)
        cache = caches[0] if len(caches) == 1 else caches[0].concat(caches)
    model.train(was_training)
    return responses, torch.cat(logps).cpu(), pruned
