"""The demo's options, its result and its error (DemoConfig, DemoResult, DemoError), and its shared constants."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1_plugin.demo import assets
from r1_plugin.demo.synthetic import demo_questions
from r1_plugin.errors import R1PluginError

DEFAULT_OUT = Path("demo_out")
DEFAULT_FEATURE = "before backtracking"
FALLBACK_FEATURE = "backtracking"  # searched when the default finds nothing (e.g. Goodfire's labels)
# Auto strength: this many times the feature's strongest activation in the feature database.
DEFAULT_STRENGTH_FACTOR = 3.0
SWEEP_FACTORS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
BACKTRACK_PATTERN = re.compile(r"\bWait\b")
GENERATION_COLUMNS: tuple[str, ...] = (
    "prompt",
    "unsteered",
    "steered",
    "gate_position",
    "strength",
    "feature_id",
    "feature_label",
    "first_divergence",
    "backtracks_unsteered",
    "backtracks_steered",
)

Log = Callable[[str], None]


class DemoError(R1PluginError, RuntimeError):
    """The demo cannot run as asked (no feature found, missing feature database, bad options)."""


@dataclass
class DemoConfig:
    """Everything the demo does; the defaults run the embedded tiny R1 offline."""

    model: str = str(assets.MODEL_DIR)  # the embedded tiny R1, by path
    sae_release: str | None = None  # None: the embedded tiny R1's SAE, loaded by path from the package
    sae_id: str = assets.SAE_ID
    feature: str = DEFAULT_FEATURE  # a label search text or a feature id
    strength: float | None = None  # None: DEFAULT_STRENGTH_FACTOR x the feature's top activation in the DB
    prompts: Sequence[str] = field(default_factory=lambda: list(demo_questions()))
    device: str = "cpu"
    dtype: str = "float32"
    first_n_layers: int | None = None
    n_devices: int = 1  # split the blocks across this many GPUs, by bytes (R1 with keep_fp8: one 8xH200 node)
    keep_fp8: bool = False  # keep R1's FP8 checkpoint weights FP8 in memory (from_pretrained's keep_fp8)
    sae_device: str | None = None  # where the SAE sits (default: `device`)
    out: Path = DEFAULT_OUT
    max_new_tokens: int = 120
    features_labels: Path | None = None  # autointerp.db / .csv; default: the embedded DB for the embedded SAE
    features_activations: Path | None = None  # <sae>.ddb; default: the embedded DB for the embedded SAE
    sweep: bool = True
    experiments: bool = True  # short runs of the four findings experiments (r1_plugin/demo/experiments.py)
    wandb_mode: str | None = "offline"
    wandb_dir: Path | None = None  # default: $WANDB_DIR, else <out>
    seed: int = 0
    backend: str | None = None  # "hooked" (HookedTransformer) or "bridge" (TransformerBridge); None: the default

    @property
    def embedded(self) -> bool:
        """Whether the model is the embedded tiny R1 (loaded by path from the package: nothing touches the hub)."""
        return assets.is_embedded_model(self.model)

    @property
    def sae_name(self) -> str:
        """The SAE as the report names it: `<release>/<id>`, or the embedded SAE's name."""
        return f"{self.sae_release}/{self.sae_id}" if self.sae_release else f"{assets.SAE_NAME}/{assets.SAE_ID}"


@dataclass
class DemoResult:
    """What the demo produced: the feature, the generations, the sink check, and where the files are."""

    feature_id: int
    feature_label: str
    strength: float
    hook_name: str
    generations: list[dict[str, Any]]
    sweep: list[dict[str, Any]]
    sinks: dict[str, Any]
    files: dict[str, Path]
    wandb_run_dir: Path | None
    seconds: float
    report: str
    experiments: str = ""  # the findings experiments' report section (markdown)
