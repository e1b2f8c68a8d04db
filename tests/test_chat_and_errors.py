"""R1 chat formatting for the three tokenizer families, and the clear errors of model loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer

from r1_plugin import format_r1_prompt, r1_chat_tokens
from r1_plugin.chat import render_r1_template
from r1_plugin.errors import MissingFromCacheError, UnknownModelError, UnsupportedArchitectureError
from r1_plugin.testing.distill_checkpoints import write_tiny_distill
from r1_plugin.testing.tokenizers import build_tokenizer


@pytest.fixture(scope="module")
def special_tokens(r1_configs) -> dict:
    return json.loads((r1_configs / "special-tokens.json").read_text())


@pytest.mark.parametrize(
    ("family", "published"),
    [("r1", "r1_v3_tokenizer"), ("qwen", "qwen_distill_tokenizer"), ("llama", "llama_distill_tokenizer")],
)
def test_single_user_prompt_renders_like_published_template(special_tokens, family, published):
    tokenizer = build_tokenizer(family)
    text = format_r1_prompt(tokenizer, "Hi")
    assert text == special_tokens["families"][published]["example_render_single_user"]
    assert text.endswith("<think>\n")


@pytest.mark.parametrize(("family", "published"), [("r1", "r1_v3_tokenizer"), ("qwen", "qwen_distill_tokenizer")])
def test_multi_turn_with_system_renders_like_published_template(special_tokens, family, published):
    tokenizer = build_tokenizer(family)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"}]
    text = format_r1_prompt(tokenizer, "2+2?", system="SYS", history=history)
    assert text == special_tokens["families"][published]["example_render_multi_turn"]


def test_manual_renderer_equals_template():
    tokenizer = build_tokenizer("r1")
    messages = [
        {"role": "system", "content": "A"},
        {"role": "system", "content": "B"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>x</think>ans"},
        {"role": "user", "content": "q2"},
    ]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_r1_template(messages, tokenizer.bos_token) == expected


@pytest.mark.parametrize("family", ["r1", "qwen", "llama"])
def test_chat_tokens_have_exactly_one_bos(family):
    tokenizer = build_tokenizer(family)
    ids = r1_chat_tokens(tokenizer, "What is 2+2?")[0].tolist()
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert ids[-2:] == tokenizer("<think>\n", add_special_tokens=False)["input_ids"][-2:]
    # the naive way (template text re-encoded with the tokenizer's BOS) doubles it: what the helper avoids
    naive = tokenizer(format_r1_prompt(tokenizer, "What is 2+2?"))["input_ids"]
    assert naive.count(tokenizer.bos_token_id) == 2


def test_generate_from_chat_tokens(hf_cache):
    write_tiny_distill("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    model = HookedTransformer.from_pretrained_no_processing("r1-distill-qwen-1.5b", device="cpu")
    tokens = r1_chat_tokens(model, "What is 2+2?")
    out = model.generate(tokens, max_new_tokens=5, do_sample=False, use_past_kv_cache=True, verbose=False)
    assert torch.equal(out[:, : tokens.shape[1]], tokens) and out.shape[1] == tokens.shape[1] + 5


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownModelError) as err:
        HookedTransformer.from_pretrained("deepseek-ai/DeepSeek-R1-Distill-Lama-8B")
    assert "deepseek-ai/DeepSeek-R1-Distill-Llama-8B" in str(err.value)
    assert isinstance(err.value, ValueError)  # callers catching TL's ValueError still work


def test_local_folder_with_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}))
    with pytest.raises(UnsupportedArchitectureError) as err:
        HookedTransformer.from_pretrained_no_processing(str(tmp_path))
    assert "MambaForCausalLM" in str(err.value) and "DeepseekV3ForCausalLM" in str(err.value)


def test_local_folder_of_a_supported_architecture_loads(tmp_path, hf_cache):
    hf_model, snapshot = write_tiny_distill("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", seed=7)
    model = HookedTransformer.from_pretrained_no_processing(str(snapshot), device="cpu")
    tokens = torch.randint(0, 380, (1, 12))
    with torch.no_grad():
        assert torch.allclose(model(tokens), hf_model(tokens).logits, atol=1e-4, rtol=0)


def test_missing_file_offline_names_repo_and_fix(hf_cache):
    with pytest.raises(MissingFromCacheError) as err:
        HookedTransformer.from_pretrained_no_processing("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", revision="nope")
    message = str(err.value)
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B" in message and "config.json" in message
    assert "hf download" in message and "HF_HUB_OFFLINE" in message


def test_missing_weights_offline_names_repo(hf_cache, r1_configs):
    from r1_plugin.testing.hub import write_hf_repo

    raw = json.loads((r1_configs / "r1-distill-qwen-14b.json").read_text())
    raw.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, vocab_size=400)
    write_hf_repo("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", {"config.json": json.dumps(raw)}, revision="cfgonly")
    with pytest.raises(MissingFromCacheError) as err:
        HookedTransformer.from_pretrained_no_processing("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", revision="cfgonly")
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B" in str(err.value)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """A fresh, empty HF cache for one test (huggingface_hub and transformers read the constant at call time)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "hf_cache"


def test_missing_tokenizer_offline_is_a_clear_error_not_an_empty_tokenizer(empty_hf_cache):
    # Weights and config cached, tokenizer files not: transformers 5 would silently build an EMPTY tokenizer from
    # the config's model_type (len 1, every text encodes to []), or fail with an unrelated sentencepiece message.
    _, snapshot = write_tiny_distill("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    for path in snapshot.iterdir():
        if path.name.startswith("tokenizer") or path.name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
            path.unlink()
    with pytest.raises(MissingFromCacheError) as err:
        HookedTransformer.from_pretrained_no_processing("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", device="cpu")
    message = str(err.value)
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" in message and "tokenizer" in message
    assert "hf download" in message


def test_missing_deepseek_weights_offline_names_repo_and_fix(empty_hf_cache):
    from r1_plugin.testing.deepseek_checkpoints import tiny_config, tokenizer_files
    from r1_plugin.testing.hub import write_hf_repo

    write_hf_repo("deepseek-ai/DeepSeek-V3-0324", {"config.json": json.dumps(tiny_config()), **tokenizer_files("r1")})
    with pytest.raises(MissingFromCacheError) as err:
        HookedTransformer.from_pretrained_no_processing("deepseek-ai/DeepSeek-V3-0324", device="cpu")
    message = str(err.value)
    assert "deepseek-ai/DeepSeek-V3-0324" in message and "model.safetensors" in message
    assert "hf download" in message and "HF_HUB_OFFLINE" in message


def test_missing_deepseek_tokenizer_offline_names_repo(empty_hf_cache):
    from r1_plugin.testing.deepseek_checkpoints import tiny_config
    from r1_plugin.testing.hub import write_hf_repo

    write_hf_repo("deepseek-ai/DeepSeek-V3", {"config.json": json.dumps(tiny_config())})
    with pytest.raises(MissingFromCacheError) as err:
        HookedTransformer.from_pretrained_no_processing("deepseek-ai/DeepSeek-V3", device="cpu")
    assert "deepseek-ai/DeepSeek-V3" in str(err.value) and "tokenizer" in str(err.value)


def test_local_folder_without_architectures_gets_a_clear_error(tmp_path):
    # A config.json without `architectures` (e.g. hand-written): say so, instead of TransformerLens's
    # "'NoneType' object is not subscriptable" or an unrelated transformers validation error.
    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
              "intermediate_size": 128, "vocab_size": 400}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError) as err:
        HookedTransformer.from_pretrained_no_processing(str(tmp_path))
    assert "architectures" in str(err.value) and str(tmp_path) in str(err.value)


def test_fetch_command_in_missing_file_errors_is_runnable():
    # A description rather than a file name ("model weights (*.safetensors)") must not be pasted into the command.
    message = str(MissingFromCacheError("deepseek-ai/DeepSeek-R1", "tokenizer files (tokenizer.json, tokenizer_config.json)"))
    assert "`hf download deepseek-ai/DeepSeek-R1`" in message and "tokenizer files" in message
    message = str(MissingFromCacheError("deepseek-ai/DeepSeek-R1", "config.json"))
    assert "`hf download deepseek-ai/DeepSeek-R1 config.json`" in message


def test_transformers_offline_counts_as_offline(monkeypatch):
    # huggingface_hub treats TRANSFORMERS_OFFLINE=1 as HF_HUB_OFFLINE=1; so must the missing-file checks.
    from r1_plugin.errors import hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub_offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    assert not hub_offline()


def test_missing_from_cache_translates_only_cache_misses() -> None:
    """One definition of the not-cached translation (issue #21): every load path uses `missing_from_cache`."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from r1_plugin.errors import missing_from_cache

    with pytest.raises(MissingFromCacheError) as info:
        with missing_from_cache("org/repo", "config.json"):
            raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")
    assert "`hf download org/repo config.json`" in str(info.value)
    assert isinstance(info.value.__cause__, LocalEntryNotFoundError) and info.value.filename == "config.json"
    with pytest.raises(MissingFromCacheError, match=r"\(We couldn't connect"):
        with missing_from_cache("org/repo", "config.json", detail=True):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    with pytest.raises(PermissionError):  # anything else passes through unchanged
        with missing_from_cache("org/repo", "config.json"):
            raise PermissionError("read-only cache")
    with missing_from_cache("org/repo"):
        pass


def test_the_translation_is_written_once() -> None:
    """No module but errors.py (the definition) and the CLI's classifier calls is_missing_file_error itself."""
    import r1_plugin

    package = Path(r1_plugin.__file__).parent
    callers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if "is_missing_file_error(" in p.read_text(encoding="utf-8"))
    assert callers == ["cli/_errors.py", "errors.py"]
