"""Small byte-level BPE tokenizers with R1's special tokens and the chat templates of the three R1 families."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"

# The R1/V3 template (HF tokenizer_config.json since 2025-02-09): system prompts joined by blank lines right after
# BOS, prior answers stripped up to '</think>', tool turns, and the forced '<think>\n' generation prompt.
R1_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)

# The distills' template (Qwen and Llama families): one system prompt, '{{bos_token}}{{ns.system_prompt}}',
# tool outputs after the first prefixed by a newline; same generation prompt.
DISTILL_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)

# Special tokens per family, in id order after the base vocabulary (real id values differ per family; code must
# read ids from the tokenizer). `special` mirrors the published tokenizers: <think> tokens are not special.
FAMILY_SPECIAL_TOKENS: dict[str, list[tuple[str, bool]]] = {
    "r1": [
        (BOS, True), (EOS, True), ("<｜▁pad▁｜>", True), ("<think>", False), ("</think>", False),
        (USER, True), (ASSISTANT, True), ("<|EOT|>", True),
        ("<｜tool▁outputs▁begin｜>", True), ("<｜tool▁outputs▁end｜>", True),
        ("<｜tool▁output▁begin｜>", True), ("<｜tool▁output▁end｜>", True),
    ],
    "qwen": [
        (EOS, True), (USER, True), (ASSISTANT, True), (BOS, True), ("<|EOT|>", True),
        ("<think>", False), ("</think>", False),
        ("<｜tool▁outputs▁begin｜>", True), ("<｜tool▁outputs▁end｜>", True),
        ("<｜tool▁output▁begin｜>", True), ("<｜tool▁output▁end｜>", True),
    ],
    "llama": [
        (BOS, True), (EOS, True), (USER, False), (ASSISTANT, False), ("<think>", False), ("</think>", False),
        ("<｜▁pad▁｜>", True),
        ("<｜tool▁outputs▁begin｜>", True), ("<｜tool▁outputs▁end｜>", True),
        ("<｜tool▁output▁begin｜>", True), ("<｜tool▁output▁end｜>", True),
    ],
}

DEFAULT_CORPUS: tuple[str, ...] = (
    "Okay, so the user asked about the sum of two numbers. Let me think about this step by step.",
    "Wait, that is not right. Let me check again: 3 + 4 = 7, and 7 * 2 = 14.",
    "Hmm, first I need to find the area of the triangle, then divide by two.",
    "The answer is 42. So the final answer is \\boxed{42}.",
    "What is the capital of France? Paris is the capital of France.",
    "Alternatively, maybe I should consider the case where x is negative. But wait, earlier I said x > 0.",
    "I need to be careful here: the question says at least, not exactly.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) . , ? ! : ; ' \" \n\n",
)


def build_tokenizer(family: str = "r1", corpus: Iterable[str] | None = None, vocab_size: int = 384) -> Any:
    """A `PreTrainedTokenizerFast` for `family` ("r1", "qwen" or "llama"): byte-level BPE trained on `corpus`,
    the family's special tokens and chat template, and a post-processor that adds BOS like the real ones."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILY_SPECIAL_TOKENS:
        raise ValueError(f"unknown tokenizer family {family!r}; use one of {sorted(FAMILY_SPECIAL_TOKENS)}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(list(corpus or DEFAULT_CORPUS), trainer=trainer)
    specials = FAMILY_SPECIAL_TOKENS[family]
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in specials])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=16384,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = R1_CHAT_TEMPLATE if family == "r1" else DISTILL_CHAT_TEMPLATE
    return fast


def build_tokenizer_files(
    family: str = "r1", corpus: Iterable[str] | None = None, vocab_size: int = 384
) -> dict[str, bytes]:
    """The files `save_pretrained` writes for `build_tokenizer(...)` (tokenizer.json, tokenizer_config.json, ...)."""
    tokenizer = build_tokenizer(family, corpus, vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    config = json.loads(files["tokenizer_config.json"])
    config["add_bos_token"] = True  # as in every published R1 tokenizer_config.json
    # The published repos keep the template inside tokenizer_config.json (no chat_template.jinja file).
    template = files.pop("chat_template.jinja", None)
    config["chat_template"] = template.decode() if template else tokenizer.chat_template
    files["tokenizer_config.json"] = json.dumps(config, indent=2, ensure_ascii=False).encode()
    return files
