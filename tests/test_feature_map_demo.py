"""The demo's feature map: the embedded SAE, loaded as the demo loads it, with the embedded feature database."""

from __future__ import annotations

import json

import numpy as np

from r1_plugin.demo.feature_map import write_demo_map
from r1_plugin.demo.run import DemoConfig, _feature_db_paths, load_sae
from r1_plugin.features import FeatureDB

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_map_of_the_embedded_sae(tmp_path):
    cfg = DemoConfig(out=tmp_path)
    sae = load_sae(cfg)
    labels, activations = _feature_db_paths(cfg)
    lines: list[str] = []
    files = write_demo_map(sae, labels, activations, tmp_path, "tiny", feature_id=654, log=lines.append)
    assert files["feature_map_png"].read_bytes()[:8] == PNG_MAGIC
    page = files["feature_map_html"].read_text(encoding="utf-8")
    data = json.loads(page.split('id="fm-data">', 1)[1].split("</script>", 1)[0])
    d_sae = sae.W_dec.shape[0]
    assert len(data["x"]) == len(data["labels"]) == d_sae and np.isfinite(data["x"]).all()
    with FeatureDB(labels=labels, activations=activations) as db:
        for fid in db.feature_ids():
            if fid < d_sae:
                assert data["labels"][fid] == db.label(fid)
        top = db.top_examples(654, k=5, context=8)
    assert [e[0] for e in data["examples"]["654"]] == [round(e.strength, 5) for e in top]
    assert lines and lines[0].endswith("feature_map.html#654") and "(computed)" in lines[0]
    write_demo_map(sae, labels, activations, tmp_path, "tiny", log=lines.append)
    assert "(cached)" in lines[1]
