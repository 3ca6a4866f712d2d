"""
Tokenizers as tiktoken.Encodings built from local files (nothing is downloaded):

- Tokenizer.for_chars: one token per character of a fixed alphabet, for the from-scratch tasks;
- Tokenizer.from_pretrained: the byte-level BPE of a Hugging Face checkpoint directory (GPT-2,
  Qwen2/Qwen3, Llama-style), rebuilt from vocab.json + merges.txt or tokenizer.json, with the
  checkpoint's end-of-sequence ids and, only where its own configuration has a chat template,
  chat-formatted prompts.
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
    and the prompt format (chat: "chatml" only where the checkpoint ships a ChatML chat template)."""

    EOS = "<|endoftext|>"
    PAD = "<|pad|>"   # a reserved id of the character tokenizer (kept so the vocabulary size stays put)

    def __init__(self, encoding, eos_id, stop_ids=None, alphabet=None, chat=None):
        self.enc = encoding
        self.eos_id = eos_id
        self.stop_ids = tuple(stop_ids) if stop_ids else (eos_id,)
        self.alphabet = alphabet  # character-level tokenizers: the characters it knows
        self.chat = chat

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
    def from_pretrained(cls, path):
        """The byte-level BPE of a Hugging Face checkpoint directory as a tiktoken.Encoding: ranks from
        vocab.json (+ merges.txt) or tokenizer.json, the family's pre-tokenizer pattern, the special
        (added) tokens; the stop ids from generation_config.json (every id of its eos_token_id),
        else tokenizer_config.json's eos_token."""
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
        decode_byte = {c: b for b, c in byte_to_unicode().items()}
        ranks = {}
        for token, i in vocab.items():
            if token in specials:
                continue
            try:
                ranks[bytes(decode_byte[c] for c in token)] = i
            except KeyError:
                raise CheckpointError(f"{path}: vocabulary entry {token!r} is not byte-level BPE")
        family = "qwen2" if "qwen" in (read("config.json").get("model_type", "") +
                                        tc.get("tokenizer_class", "")).lower() else "gpt2"
        pattern = QWEN2_PATTERN if family == "qwen2" else GPT2_PATTERN
        pre = tj.get("pre_tokenizer") or {}
        for step in pre.get("pretokenizers", [pre]):
            if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
                pattern = step["pattern"]["Regex"]
        enc = tiktoken.Encoding(name=f"hf-{family}", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        stop = read("generation_config.json").get("eos_token_id")
        stop = [stop] if isinstance(stop, int) else list(stop or [])
        if not stop:
            name = tc.get("eos_token")
            name = name.get("content") if isinstance(name, dict) else name
            stop = [specials[name or cls.EOS]] if (name or cls.EOS) in specials else []
        if not stop:
            raise CheckpointError(f"{path}: no end-of-sequence token (generation_config.json eos_token_id, "
                                  f"tokenizer_config.json eos_token, or {cls.EOS})")
        return cls(enc, stop[0], stop, chat=chat_format(path, tc))

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
        """A task prompt in the model's format: ChatML where the checkpoint's chat template is ChatML,
        else the text as is (base models)."""
        if self.chat == "chatml":
            return (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
        return text

    def encode_prompt(self, text):
        return self.encode(self.prompt(text))


def chat_format(path, tokenizer_config):
    """"chatml" when the checkpoint's own tokenizer configuration carries a ChatML chat template
    (tokenizer_config.json's chat_template, or chat_template.jinja beside it), None when it has none
    (a base model: raw prompts). A chat template of another format is refused, not guessed."""
    template = tokenizer_config.get("chat_template")
    jinja = os.path.join(path, "chat_template.jinja")
    if template is None and os.path.exists(jinja):
        with open(jinja) as f:
            template = f.read()
    if isinstance(template, list):            # named templates: [{"name": "default", "template": ...}, ...]
        template = " ".join(t.get("template", "") for t in template)
    if not template:
        return None
    if "<|im_start|>" in template:
        return "chatml"
    raise CheckpointError(f"{path}: the chat template is not ChatML; only ChatML chat prompts are supported "
                          f"(remove chat_template from tokenizer_config.json to use raw prompts)")
