"""Test-suite set-up: an offline, temporary Hugging Face cache and offline W&B, before anything imports them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Must run before huggingface_hub / transformers / wandb are imported: they read these at import time.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="r1_plugin_tests_"))
os.environ["HF_HUB_CACHE"] = str(_SESSION_DIR / "hf_cache")
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf_home")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_DIR"] = str(_SESSION_DIR / "wandb")
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import r1_plugin  # noqa: E402,F401  (registers the models and SAEs)

SHARED = Path(os.environ.get("R1_PLUGIN_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
R1_CONFIGS = SHARED / "reference" / "r1-configs"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def hf_cache() -> Path:
    """The session's temporary HF cache (HF_HUB_CACHE); tests write tiny checkpoints into it under real repo ids."""
    path = Path(os.environ["HF_HUB_CACHE"])
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def r1_configs() -> Path:
    """The folder of published R1 / distill config.json files (shared/reference/r1-configs)."""
    if not R1_CONFIGS.is_dir():
        pytest.fail(f"published configs not found at {R1_CONFIGS}: CI runs with shared/ beside the clone")
    return R1_CONFIGS


@pytest.fixture
def opened_shards(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the safetensors shards the DeepSeek-V3 loader opens during the test, in order."""
    from r1_plugin.models.deepseek_v3 import checkpoint_files

    opened: list[str] = []
    original = checkpoint_files.open_safetensors

    @contextmanager
    def spy(path: Path) -> Iterator[object]:
        opened.append(path.name)
        with original(path) as handle:
            yield handle

    monkeypatch.setattr(checkpoint_files, "open_safetensors", spy)
    return opened
