"""
Tokenizers as tiktoken.Encodings built from local files (nothing is downloaded):

- Tokenizer.for_chars: one token per character of a fixed alphabet, for the from-scratch tasks;
- Tokenizer.from_pretrained: the byte-level BPE of a Hugging Face checkpoint directory (GPT-2,
  Qwen2/Qwen3, Llama-style, SmolLM), rebuilt from vocab.json + merges.txt or tokenizer.json, with the
  checkpoint's end-of-sequence ids and, where it has one, its own chat template;
- Tokenizer.from_bpe: the same from a vocabulary in memory (gguf_io.py reads one from a GGUF file).
Chat prompts are the checkpoint's template rendered by Jinja as transformers renders it (render_chat).
"""

import json
import os

import tiktoken


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded: the message names the file, the key, the shape."""


def read_json(path):
    if not os.path.exists(path):
        raise CheckpointError(f"missing file {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}")


# pre-tokenizer patterns of the byte-level BPE families (split text before merging)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# SmolLM (llama.cpp's pre-tokenizer "smollm"; tokenizers' Digits(individual) then ByteLevel): each digit is a
# piece of its own and GPT-2's split runs on what lies between digits, so a run of whitespace before a digit
# stays one piece (the first whitespace alternative)
DIGITS_GPT2_PATTERN = r"""\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                  r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def byte_to_unicode():
    """GPT-2's reversible map from the 256 bytes to printable characters, in which byte-level BPE
    vocabularies are written: printable Latin-1 bytes stand for themselves, the others for 256 + n."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


class Tokenizer:
    """A tiktoken.Encoding plus what sampling needs: eos_id (the end-of-sequence id, also the padding),
    stop_ids (every id that ends a response: a checkpoint's generation_config may list several),
    and the prompt format: chat, the checkpoint's own chat template (a Jinja string) where it has one,
    rendered by prompt(); None for base models and the character tokenizer (raw prompts)."""

    EOS = "<|endoftext|>"
    PAD = "<|pad|>"   # a reserved id of the character tokenizer (kept so the vocabulary size stays put)

    def __init__(self, encoding, eos_id, stop_ids=None, alphabet=None, chat=None, template_vars=None, source=""):
        self.enc = encoding
        self.eos_id = eos_id
        self.stop_ids = tuple(stop_ids) if stop_ids else (eos_id,)
        self.alphabet = alphabet  # character-level tokenizers: the characters it knows
        self.chat = chat          # the chat template (Jinja source) or None
        self.template_vars = dict(template_vars or {})   # bos_token, eos_token, ...: what templates may read
        self.source = source      # the checkpoint it came from (named in errors)
        if chat:
            self.prompt("2+3=?")  # a template that cannot render fails here, at load, naming the checkpoint

    @classmethod
    def for_chars(cls, alphabet):
        chars = sorted(set(alphabet))
        if any(len(c.encode("utf-8")) != 1 for c in chars):
            raise ValueError("the character tokenizer takes single-byte (ASCII) characters only")
        ranks = {c.encode("utf-8"): i for i, c in enumerate(chars)}
        specials = {cls.EOS: len(chars), cls.PAD: len(chars) + 1}
        enc = tiktoken.Encoding(name="chars", pat_str=r"[\s\S]", mergeable_ranks=ranks,
                                special_tokens=specials)
        return cls(enc, specials[cls.EOS], alphabet="".join(chars))

    @classmethod
    def from_bpe(cls, vocab, specials, pattern, stop_ids, chat=None, template_vars=None, source="", name="bpe"):
        """A byte-level BPE from its vocabulary {token as written (GPT-2's byte-to-unicode characters): id}
        and its special tokens {text: id}. tiktoken merges by rank, and the rank is the id: that is BPE's
        merge order for vocabularies whose ids follow their merges (GPT-2, Qwen, Llama 3, SmolLM)."""
        decode_byte = {c: b for b, c in byte_to_unicode().items()}
        ranks = {}
        for token, i in vocab.items():
            if token in specials:
                continue
            try:
                ranks[bytes(decode_byte[c] for c in token)] = i
            except KeyError:
                raise CheckpointError(f"{source}: vocabulary entry {token!r} is not byte-level BPE")
        enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        return cls(enc, stop_ids[0], stop_ids, chat=chat, template_vars=template_vars, source=source)

    @classmethod
    def from_pretrained(cls, path):
        """The byte-level BPE of a Hugging Face checkpoint directory as a tiktoken.Encoding: ranks from
        vocab.json (+ merges.txt) or tokenizer.json, the family's pre-tokenizer pattern, the special
        (added) tokens; the stop ids from generation_config.json (every id of its eos_token_id),
        else tokenizer_config.json's eos_token; the chat template from tokenizer_config.json or
        chat_template.jinja."""
        if not os.path.isdir(path):
            raise CheckpointError(f"tokenizer directory {path} does not exist")
        read = lambda name: read_json(os.path.join(path, name)) if os.path.exists(os.path.join(path, name)) else {}
        tj, tc = read("tokenizer.json"), read("tokenizer_config.json")
        if os.path.exists(os.path.join(path, "vocab.json")):
            vocab = read("vocab.json")
        elif tj.get("model", {}).get("type") == "BPE":
            vocab = tj["model"]["vocab"]
        else:
            raise CheckpointError(f"no vocab.json or BPE tokenizer.json in {path}")
        specials = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
        specials.update({t["content"]: int(i) for i, t in tc.get("added_tokens_decoder", {}).items()})
        family = "qwen2" if "qwen" in (read("config.json").get("model_type", "") +
                                        tc.get("tokenizer_class", "")).lower() else "gpt2"
        pattern = QWEN2_PATTERN if family == "qwen2" else GPT2_PATTERN
        pre = tj.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", [pre])
        for step in steps:
            if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
                pattern = step["pattern"]["Regex"]
        if any(s.get("type") == "Digits" and s.get("individual_digits") for s in steps):
            pattern = DIGITS_GPT2_PATTERN          # SmolLM: each digit its own piece, then GPT-2's split
        stop = read("generation_config.json").get("eos_token_id")
        stop = [stop] if isinstance(stop, int) else list(stop or [])
        names = special_token_names(tc, read("special_tokens_map.json"))
        if not stop:
            name = names.get("eos_token") or cls.EOS
            stop = [specials[name]] if name in specials else []
        if not stop:
            raise CheckpointError(f"{path}: no end-of-sequence token (generation_config.json eos_token_id, "
                                  f"tokenizer_config.json eos_token, or {cls.EOS})")
        rank_vocab = {t: i for t, i in vocab.items() if t not in specials}
        return cls.from_bpe(rank_vocab, specials, pattern, stop, chat=chat_template(path, tc), template_vars=names,
                            source=path, name=f"hf-{family}")

    @property
    def vocab_size(self):
        return self.enc.n_vocab

    def encode(self, text):
        if self.alphabet is None:          # Hugging Face BPE: special tokens in the text are specials
            return self.enc.encode(text, allowed_special="all")
        for c in text:                     # tiktoken panics (a BaseException) on a character without a rank
            if c not in self.alphabet:
                raise ValueError(f"character {c!r} is not in the tokenizer's alphabet {self.alphabet!r}")
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        """Text of the ids; an id the tokenizer lacks (an embedding table may have more rows than the
        tokenizer has ids, and a vocabulary may have gaps) decodes to U+FFFD, so that it can never pass
        for a real answer."""
        ids = list(ids)
        try:
            return self.enc.decode(ids)
        except (KeyError, ValueError, OverflowError):
            pass
        out, run = [], []
        for i in ids + [None]:
            try:
                run.append(self.enc.decode_single_token_bytes(i))
                continue
            except (KeyError, ValueError, OverflowError, TypeError):
                out.append(b"".join(run).decode("utf-8", errors="replace"))
                run = []
            if i is not None:
                out.append("\ufffd")
        return "".join(out)

    def prompt(self, text):
        """A task prompt in the model's format: its chat template rendered for one user message with the
        generation prompt added (as transformers' apply_chat_template(..., add_generation_prompt=True,
        tokenize=False)), else the text as is (base models)."""
        if not self.chat:
            return text
        return render_chat(self.chat, [{"role": "user", "content": text}], self.source, **self.template_vars)

    def encode_prompt(self, text):
        return self.encode(self.prompt(text))


def chat_template(path, tokenizer_config):
    """The checkpoint's own chat template (tokenizer_config.json's chat_template, or chat_template.jinja
    beside it; of named templates, "default"), None when it has none (a base model: raw prompts)."""
    template = tokenizer_config.get("chat_template")
    jinja = os.path.join(path, "chat_template.jinja")
    if template is None and os.path.exists(jinja):
        with open(jinja) as f:
            template = f.read()
    if isinstance(template, list):            # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template or None


def special_token_names(*configs):
    """{bos_token: text, eos_token: text, ...} of a tokenizer_config.json / special_tokens_map.json, the
    variables transformers hands a chat template (the first config that names a token wins)."""
    out = {}
    for c in reversed(configs):
        for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            v = c.get(key)
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str):
                out[key] = v
    return out


def render_chat(template, messages, source, **variables):
    """A chat template rendered as transformers renders it: Jinja's immutable sandbox, trim_blocks and
    lstrip_blocks, loop controls, raise_exception, strftime_now and a tojson that keeps non-ASCII text.
    A template that fails (its syntax, or its own raise_exception): CheckpointError naming the checkpoint."""
    import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, tools=None, documents=None,
                                                add_generation_prompt=True, **variables)
    except jinja2.exceptions.TemplateError as e:
        raise CheckpointError(f"{source}: its chat template failed to render: {type(e).__name__}: {e}")
