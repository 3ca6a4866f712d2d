"""Chat prompts from a checkpoint's own template, against transformers' apply_chat_template on the same
tokenizer files; the SmolLM pre-tokenizer (each digit alone, then GPT-2's split) against tokenizers'."""
import json
import random

import pytest

from tokenizer import CheckpointError, Tokenizer

transformers = pytest.importorskip("transformers")   # installed by requirements-test.txt; CI runs these

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
           "trained by Hugging Face<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML_DEFAULT_SYSTEM = (   # Qwen2.5's layout: a default system line where the conversation has none
    "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if message.role != 'system' %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + "
    "'<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")
LLAMA3 = (  # Llama 3's layout: bos_token, header tokens, an end-of-turn token, a date line
    "{{- bos_token }}\n{%- set date_string = date_string | default('26 Jul 2024') %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- '<|eot_id|>' }}\n{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n")
ALTERNATING = (  # Mistral's layout: raise_exception unless the roles alternate user/assistant
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>"]


def tokenizer_dir(tmp, name, template, bos="<|begin_of_text|>", eos="<|im_end|>", pre=None):
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = random.Random(0)
    words = ["Write", "as", "a", "sum", "of", "2", "single", "digits", "7", "13", "  ", "\n", "answer", "<", ">", "é"]
    tok.train_from_iterator([" ".join(rng.choice(words) for _ in range(30)) for _ in range(300)], trainer)
    path = tmp / name
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos}
    if template is not None:
        cfg["chat_template"] = template
    json.dump(cfg, open(path / "tokenizer_config.json", "w"))
    return str(path), tok


@pytest.mark.parametrize("name,template", [("smollm2", SMOLLM2), ("chatml_default_system", CHATML_DEFAULT_SYSTEM),
                                           ("llama3", LLAMA3), ("alternating", ALTERNATING)])
def test_prompt_equals_transformers_apply_chat_template(tmp_path, name, template):
    path, hf = tokenizer_dir(tmp_path, name, template)
    ours = Tokenizer.from_pretrained(path)
    theirs = transformers.AutoTokenizer.from_pretrained(path)
    for text in ("Write 7 as a sum of 2 single digits, in the form d+d.", "  spaced  \n and é ", "<answer>3</answer>"):
        expected = theirs.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              tokenize=False)
        assert ours.prompt(text) == expected
        assert ours.encode_prompt(text) == hf.encode(expected).ids
    if name == "llama3":                        # header tokens are single special ids
        ids = ours.encode_prompt("x")
        assert ids[0] == hf.token_to_id("<|begin_of_text|>") and ids.count(hf.token_to_id("<|eot_id|>")) == 2


def test_a_template_that_fails_is_one_error_naming_the_checkpoint(tmp_path):
    always = "{{ raise_exception('This model has no chat mode') }}"
    path, _ = tokenizer_dir(tmp_path, "raises", always)
    with pytest.raises(CheckpointError, match=r"raises: its chat template failed to render: .*no chat mode"):
        Tokenizer.from_pretrained(path)
    path, _ = tokenizer_dir(tmp_path, "syntax", "{% for m in messages %}{{ m['content'] }")
    with pytest.raises(CheckpointError, match=r"syntax: its chat template failed to render: TemplateSyntaxError"):
        Tokenizer.from_pretrained(path)
    path, _ = tokenizer_dir(tmp_path, "sandbox", "{{ messages.__class__.__mro__ }}")     # the sandbox holds
    with pytest.raises(CheckpointError, match="failed to render"):
        Tokenizer.from_pretrained(path)


def test_no_template_means_raw_prompts(tmp_path):
    path, _ = tokenizer_dir(tmp_path, "base", None)
    tok = Tokenizer.from_pretrained(path)
    assert tok.chat is None and tok.prompt("Compute 2+3.") == "Compute 2+3."


def test_smollm_pretokenizer_isolates_digits_as_tokenizers_does(tmp_path):
    from tokenizers import pre_tokenizers
    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False)])
    path, hf = tokenizer_dir(tmp_path, "smollm", SMOLLM2, pre=pre)
    ours = Tokenizer.from_pretrained(path)
    rng = random.Random(0)
    pieces = ["7", "13", "2024", " ", "  ", "   ", "\n", "\n\n", "\t", "a", "Write", " sum", "'s", "'ll", "é", "+",
              "=", "<answer>", "x1", "1x", " 1", "  1", "\n 1", "...", "日本"]
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        assert ours.encode(text) == hf.encode(text).ids, repr(text)
        assert ours.decode(ours.encode(text)) == text
