"""Synthetic R1-style reasoning traces, the tokenizer and the config of the embedded tiny R1 (r1_plugin/assets/tiny-r1).

A trace follows R1's chat format exactly: `<｜begin▁of▁sentence｜><｜User｜>{question}<｜Assistant｜><think>\\n`, a
response prefix ("Okay, so the user asked about ...", one sentence), reasoning steps separated by blank lines with
backtracking sentences ("Wait, ...") at a controllable rate, `</think>`, then the final answer and EOS.
Everything here is deterministic given a seed; `scripts/make_tiny_r1.py` builds the committed assets from it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from r1_plugin.chat import BOS_TEXT as BOS
from r1_plugin.chat import EOS_TEXT as EOS
from r1_plugin.chat import render_r1_template

QUESTION_KINDS: tuple[str, ...] = ("add", "sub", "mul", "compare", "chain")

# Sentences that open a backtracking step; the first word is what R1 writes ("Wait").
CORRECTION_SENTENCE = "Wait, that is not right."
RECHECK_SENTENCE = "Wait, let me check that again."


@dataclass(frozen=True)
class TraceConfig:
    """Knobs of the trace generator.

    backtrack_prob: chance that a reasoning step is followed by a backtracking sentence ("Wait, ...").
    error_share: of the backtracking steps, the share that first writes a wrong result and then corrects it
        (the rest re-check a correct result).
    max_operand: operands are drawn from 1..max_operand.
    i_need_prob: chance the response prefix is "Okay, so I need to ..." instead of "Okay, so the user asked about".
    kinds: question kinds to draw from (see QUESTION_KINDS).
    """

    backtrack_prob: float = 0.3
    error_share: float = 0.5
    max_operand: int = 9
    i_need_prob: float = 0.2
    kinds: tuple[str, ...] = QUESTION_KINDS

    def __post_init__(self) -> None:
        if not 0.0 <= self.backtrack_prob <= 1.0 or not 0.0 <= self.error_share <= 1.0:
            raise ValueError("backtrack_prob and error_share must be in [0, 1]")
        if self.max_operand < 2:
            raise ValueError(f"max_operand must be >= 2, got {self.max_operand}")
        unknown = set(self.kinds) - set(QUESTION_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {QUESTION_KINDS}, got {self.kinds}")


@dataclass(frozen=True)
class Trace:
    """One synthetic R1 generation: the user question, the thinking text (after `<think>\\n`) and the answer."""

    question: str
    prefix: str
    steps: tuple[str, ...]
    answer: str
    kind: str
    n_backtracks: int = 0

    @property
    def thinking(self) -> str:
        """The thinking trace as R1 writes it after `<think>\\n`: prefix then steps, blank-line separated."""
        return "\n\n".join((self.prefix, *self.steps))

    @property
    def completion(self) -> str:
        """Everything the model generates after the prompt (ends with EOS)."""
        return f"{self.thinking}\n</think>\n\n{self.answer}{EOS}"

    def prompt_text(self, bos_token: str = BOS) -> str:
        """The prompt as R1's chat template renders it with the generation prompt (ends with `<think>\\n`)."""
        return render_r1_template([{"role": "user", "content": self.question}], bos_token)

    def text(self, bos_token: str = BOS) -> str:
        """The full training text: prompt plus completion."""
        return self.prompt_text(bos_token) + self.completion

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (for W&B tables and dataset dumps)."""
        return {**asdict(self), "steps": list(self.steps), "text": self.text()}


@dataclass
class _Problem:
    """A question with its reasoning: (statement, correct result, wrong result) per step, and the answer."""

    question: str
    topic: str
    need: str
    plan: str
    steps: list[tuple[str, str, str]] = field(default_factory=list)
    conclusion: str = ""
    answer: str = ""


def _wrong(rng: random.Random, value: int) -> int:
    """A plausible wrong result: off by one or two, never negative, never the value itself."""
    candidates = [v for v in (value - 2, value - 1, value + 1, value + 2) if v >= 0 and v != value]
    return rng.choice(candidates)


def _problem(rng: random.Random, kind: str, n: int) -> _Problem:
    """Draw one question of `kind` with operands in 1..n and its step-by-step solution."""
    a, b = rng.randint(1, n), rng.randint(1, n)
    if kind == "add":
        c = a + b
        return _Problem(
            f"What is {a} + {b}?", f"the sum of {a} and {b}", f"add {a} and {b}", "I need to add the two numbers.",
            [(f"{a} + {b} = ", str(c), str(_wrong(rng, c)))],
            f"So the answer is {c}.", f"The sum of {a} and {b} is **{c}**.",
        )
    if kind == "sub":
        a, b = max(a, b), min(a, b)
        c = a - b
        return _Problem(
            f"What is {a} - {b}?", f"the difference between {a} and {b}", f"subtract {b} from {a}",
            "I need to take the second number away from the first.",
            [(f"{a} - {b} = ", str(c), str(_wrong(rng, c)))],
            f"So the answer is {c}.", f"The difference between {a} and {b} is **{c}**.",
        )
    if kind == "mul":
        c = a * b
        return _Problem(
            f"What is {a} times {b}?", f"the product of {a} and {b}", f"multiply {a} by {b}",
            "I need to multiply the two numbers.",
            [(f"{a} * {b} = ", str(c), str(_wrong(rng, c)))],
            f"So the answer is {c}.", f"The product of {a} and {b} is **{c}**.",
        )
    if kind == "compare":
        while b == a:
            b = rng.randint(1, n)
        big, small = max(a, b), min(a, b)
        return _Problem(
            f"Which is larger, {a} or {b}?", f"which number is larger, {a} or {b}", f"compare {a} and {b}",
            "I need to see which number is bigger.",
            [(f"{big} is larger than ", str(small), str(big)), (f"{small} is smaller than ", str(big), str(small))],
            f"So the larger number is {big}.", f"The larger number is **{big}**.",
        )
    if kind == "chain":
        c = rng.randint(1, n)
        s = a + b
        t = s + c
        return _Problem(
            f"What is {a} + {b} + {c}?", f"the sum of {a}, {b} and {c}", f"add {a}, {b} and {c}",
            "I need to add the numbers one at a time.",
            [(f"First, {a} + {b} = ", str(s), str(_wrong(rng, s))), (f"Then, {s} + {c} = ", str(t), str(_wrong(rng, t)))],
            f"So the answer is {t}.", f"The sum of {a}, {b} and {c} is **{t}**.",
        )
    raise ValueError(f"unknown question kind {kind!r}; use one of {QUESTION_KINDS}")


def generate_trace(rng: random.Random, config: TraceConfig | None = None) -> Trace:
    """One synthetic R1 trace drawn with `rng`."""
    config = config or TraceConfig()
    kind = rng.choice(config.kinds)
    problem = _problem(rng, kind, config.max_operand)
    if rng.random() < config.i_need_prob:
        prefix = f"Okay, so I need to {problem.need}."
    else:
        prefix = f"Okay, so the user asked about {problem.topic}."
    steps: list[str] = [problem.plan]
    n_backtracks = 0
    for statement, right, wrong in problem.steps:
        if rng.random() < config.backtrack_prob:
            n_backtracks += 1
            if rng.random() < config.error_share:
                steps.append(f"{statement}{wrong}.")
                steps.append(f"{CORRECTION_SENTENCE} {statement}{right}, not {wrong}.")
            else:
                steps.append(f"{statement}{right}.")
                steps.append(f"{RECHECK_SENTENCE} {statement}{right}, so that is correct.")
        else:
            steps.append(f"{statement}{right}.")
    steps.append(problem.conclusion)
    return Trace(problem.question, prefix, tuple(steps), problem.answer, kind, n_backtracks)


def generate_traces(n: int, seed: int = 0, config: TraceConfig | None = None) -> list[Trace]:
    """`n` traces from a fixed seed (same seed and config, same traces)."""
    rng = random.Random(seed)
    return [generate_trace(rng, config) for _ in range(n)]


def tokenizer_corpus(traces: Iterable[Trace]) -> list[str]:
    """The texts the tokenizer's BPE is trained on (without special tokens, which are added separately)."""
    return [f"{t.question}\n{t.thinking}\n\n{t.answer}" for t in traces]


# ---------------------------------------------------------------------------------------------------------------
# The tiny model's architecture: DeepSeek-V3 in miniature (MLA with q-LoRA, one dense layer then DeepSeek MoE with a
# shared expert and group-limited sigmoid routing, YaRN rope), as HF's DeepseekV3Config keyword arguments.

TOKENIZER_VOCAB_SIZE = 512

TINY_R1_ARCH: dict[str, Any] = {
    "hidden_size": 96,
    "intermediate_size": 256,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_shared_experts": 1,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_group": 2,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "kv_lora_rank": 32,
    "q_lora_rank": 48,
    "qk_rope_head_dim": 16,
    "qk_nope_head_dim": 16,
    "v_head_dim": 24,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
    "rope_interleave": True,
    "tie_word_embeddings": False,
    "num_nextn_predict_layers": 0,
    # YaRN as in R1 (factor 40 over 4096 there): factor 4 over 256 here; mscale terms as R1 publishes them.
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 256,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
}

# Keys R1's published config.json carries that HF's DeepseekV3Config does not write back; the tiny model follows
# the same routing (sigmoid scores, noaux_tc), so they are stated explicitly in its config.json too.
PUBLISHED_EXTRA_CONFIG: dict[str, Any] = {"scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1}


def tiny_r1_config(tokenizer: Any) -> Any:
    """The HF `DeepseekV3Config` of the tiny R1 for `tokenizer` (vocab size and special token ids read from it)."""
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=None,
        **TINY_R1_ARCH,
    )


def published_expert_keys(n_layers: int, first_dense: int, n_experts: int) -> list[str]:
    """The per-expert weight names of R1's published checkpoints (`mlp.experts.{e}.gate_proj.weight`, ...)."""
    return [
        f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight"
        for layer in range(first_dense, n_layers)
        for e in range(n_experts)
        for proj in ("gate_proj", "up_proj", "down_proj")
    ]


def expected_checkpoint_keys(config: Any) -> list[str]:
    """Every tensor name a published-layout DeepSeek-V3 checkpoint of `config` holds (no MTP layers), sorted."""
    keys = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    attn = ["kv_a_layernorm.weight", "kv_a_proj_with_mqa.weight", "kv_b_proj.weight", "o_proj.weight"]
    attn += ["q_a_layernorm.weight", "q_a_proj.weight", "q_b_proj.weight"] if config.q_lora_rank else ["q_proj.weight"]
    for layer in range(config.num_hidden_layers):
        base = f"model.layers.{layer}"
        keys += [f"{base}.input_layernorm.weight", f"{base}.post_attention_layernorm.weight"]
        keys += [f"{base}.self_attn.{name}" for name in attn]
        if layer < config.first_k_dense_replace:
            keys += [f"{base}.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")]
        else:
            keys += [f"{base}.mlp.gate.weight", f"{base}.mlp.gate.e_score_correction_bias"]
            keys += [f"{base}.mlp.shared_experts.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")]
    keys += published_expert_keys(config.num_hidden_layers, config.first_k_dense_replace, config.n_routed_experts)
    return sorted(keys)


def demo_questions() -> Sequence[str]:
    """Held-out style questions the demo and the build script use to show generations."""
    return ("What is 7 + 8?", "Which is larger, 3 or 9?", "What is 4 times 6?", "What is 2 + 5 + 3?")
