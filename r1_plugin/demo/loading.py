"""The demo's loaders: the model, the SAE, and the feature to steer (found in the feature database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1_plugin.demo import assets
from r1_plugin.demo.config import DEFAULT_FEATURE, FALLBACK_FEATURE, DemoConfig, DemoError


def load_model(cfg: DemoConfig) -> Any:
    """The model through `r1_plugin.drive.load_model`: `HookedTransformer.from_pretrained_no_processing(cfg.model,
    ...)` (backend "hooked") or `TransformerBridge.boot_transformers(cfg.model, ...)` (backend "bridge"); the same
    call for the tiny R1 (its packaged folder) and R1."""
    from r1_plugin.drive import ModelDriveError
    from r1_plugin.drive import load_model as drive_load

    kwargs: dict[str, Any] = {"device": cfg.device, "dtype": cfg.dtype}
    if cfg.first_n_layers is not None:
        kwargs["first_n_layers"] = cfg.first_n_layers
    if cfg.n_devices > 1:
        kwargs["n_devices"] = cfg.n_devices
    if cfg.keep_fp8:
        kwargs["keep_fp8"] = True
    try:
        model = drive_load(cfg.model, cfg.backend, **kwargs)
    except ModelDriveError as exc:
        raise DemoError(str(exc)) from exc
    model.eval()
    return model


def load_sae(cfg: DemoConfig) -> Any:
    """The embedded SAE by path (`assets.load_sae`), else `SAE.from_pretrained(release, id)` through SAELens's
    registry (r1_plugin adds Goodfire's R1 releases to it)."""
    device = cfg.sae_device or cfg.device
    if cfg.sae_release is None:
        sae = assets.load_sae(device=device)
        sae.eval()
        return sae
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if cfg.sae_release not in directory:
        near = [r for r in directory if "r1" in r.lower()][:8]
        raise DemoError(f"SAE release {cfg.sae_release!r} is not registered with SAELens (R1 releases: {near})")
    sae = SAE.from_pretrained(cfg.sae_release, cfg.sae_id, device=device)
    sae.eval()
    return sae


def _feature_db_paths(cfg: DemoConfig) -> tuple[Path | None, Path | None]:
    """The feature database to search: the options, else the embedded one for the embedded SAE."""
    if cfg.features_labels is not None or cfg.features_activations is not None:
        return cfg.features_labels, cfg.features_activations
    if cfg.sae_release is None:
        return assets.FEATURES_LABELS, assets.FEATURES_ACTIVATIONS
    return None, None


def resolve_feature(cfg: DemoConfig, sae: Any) -> tuple[int, str, list[Any], float | None]:
    """(feature id, label, top examples, top activation) for `cfg.feature`: a label search or a numeric id."""
    from r1_plugin.features import FeatureDB

    labels, activations = _feature_db_paths(cfg)
    d_sae = int(sae.W_dec.shape[0])
    if labels is None and activations is None:
        if not cfg.feature.isdigit():
            raise DemoError(
                f"--feature {cfg.feature!r} is a label search, but there is no feature database for "
                f"{cfg.sae_release}: pass --features-labels/--features-activations, or a numeric --feature"
            )
        fid = int(cfg.feature)
        if not 0 <= fid < d_sae:
            raise DemoError(f"--feature {fid} is out of range for an SAE with {d_sae} features")
        return fid, f"feature {fid}", [], None
    with FeatureDB(labels=labels, activations=activations) as db:
        if cfg.feature.isdigit():
            fid = int(cfg.feature)
            label = db.label(fid)
        else:
            hits = db.search(cfg.feature, limit=5)
            if not hits and cfg.feature == DEFAULT_FEATURE:
                hits = db.search(FALLBACK_FEATURE, limit=5)
            if not hits:
                raise DemoError(
                    f"no feature label in {labels or activations} contains {cfg.feature!r}; "
                    "try another word, or pass a numeric --feature"
                )
            fid, label = hits[0].feature_id, hits[0].label
        if not 0 <= fid < d_sae:
            raise DemoError(f"feature {fid} from the database is out of range for an SAE with {d_sae} features")
        examples = db.top_examples(fid, k=5, context=8) if activations is not None else []
    top = max((e.strength for e in examples), default=None)
    return fid, label, examples, top
