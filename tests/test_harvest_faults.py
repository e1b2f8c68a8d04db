"""Harvest and merge under faults (#20 items 3 and 8): SIGKILL at any point resumes to the same DB as an
uninterrupted run; a full disk says "no space left on <path>", leaves no temporary file, keeps what was complete,
and the same command finishes once space is freed. The subprocess tests are bounded by a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from r1_plugin.features import harvest, merge_shards
from r1_plugin.features.harvester import NoSpaceLeftError

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
PROMPTS = [f"Okay, so the user asked about {n} plus {n * 7}. Let me check step {n}." for n in range(14)]
SUBPROCESS_TIMEOUT = 240

# One script for the killed processes: `harvest` (a tiny model + seeded SAE, as `model_and_sae` builds them) or
# `merge`, SIGKILLing itself at `kill_at`. Torch's default thread count, like the test process, so the floats
# (and the DB) are the same in both.
SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import r1_plugin.features.harvester as H  # the module; r1_plugin.features.harvest is the function

    action, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if action == "harvest":
        import torch
        from sae_lens import StandardSAEConfig
        from sae_lens.saes.standard_sae import StandardSAE
        from transformer_lens import HookedTransformer

        model = HookedTransformer.from_pretrained_no_processing("%(model)s", device="cpu")
        cfg = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=24, apply_b_dec_to_input=False)
        cfg.metadata.hook_name = "blocks.1.hook_resid_post"
        sae = StandardSAE(cfg)
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
        batches = []
        def on_batch(done):
            batches.append(done)
            if kill_at == "after_batch_3" and len(batches) == 3:
                die()
        if kill_at == "between_state_and_progress":
            real, writes = H._atomic_write_bytes, []
            def write(path, data):
                real(path, data)
                writes.append(path.name)
                if writes.count("state.pt") == 2 and path.name == "state.pt":
                    die()
            H._atomic_write_bytes = write
        H.harvest(model, sae.eval(), json.loads(sys.argv[4]), out, progress=False, on_batch=on_batch,
                  **json.loads(sys.argv[5]))
    else:
        def write(con, *args):
            con.execute("CREATE TABLE started AS SELECT 1")
            con.execute("CHECKPOINT")
            die()
        H._write_merged = write
        H.merge_shards(out, sys.argv[4], overwrite=True)
    """
) % {"model": QWEN}
KWARGS = dict(top_k=4, batch_size=2, checkpoint_every=2, chunk_size=16)


def run_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "fault_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=SUBPROCESS_TIMEOUT, check=False)


def tables(path: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                for t in ("tokens", "activations", "autointerp", "harvest_info")}
    finally:
        con.close()


@pytest.fixture(scope="module")
def model_and_sae(hf_cache):
    import torch
    from sae_lens import StandardSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE
    from transformer_lens import HookedTransformer

    from r1_plugin.testing.distill_checkpoints import write_tiny_distill

    write_tiny_distill(QWEN)
    model = HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu")
    cfg = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=24, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    return model, sae.eval()


@pytest.fixture(scope="module")
def reference(model_and_sae, tmp_path_factory) -> tuple[Path, dict[str, list[tuple]]]:
    """An uninterrupted harvest (its shards) and its merged tables."""
    root = tmp_path_factory.mktemp("reference")
    harvest(*model_and_sae, PROMPTS, root / "shards", progress=False, **KWARGS)
    return root / "shards", tables(merge_shards(root / "shards", root / "ref.ddb"))


@pytest.mark.parametrize("kill_at", ["after_batch_3", "between_state_and_progress"])
def test_sigkilled_harvest_resumes_to_the_same_db(model_and_sae, reference, tmp_path: Path, kill_at: str) -> None:
    shards = tmp_path / "shards"
    killed = run_script(tmp_path, "harvest", str(shards), kill_at, json.dumps(PROMPTS), json.dumps(KWARGS))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    progress = json.loads((next(shards.glob("shard-*")) / "progress.json").read_text())
    assert 0 < progress["done"] < len(PROMPTS) and not progress["complete"]
    batches: list[int] = []
    harvest(*model_and_sae, PROMPTS, shards, progress=False, on_batch=batches.append, **KWARGS)
    assert batches[0] > 2 and batches[-1] == len(PROMPTS)  # it continued, it did not start over
    assert tables(merge_shards(shards, tmp_path / "h.ddb")) == reference[1]  # exactly


def test_sigkilled_merge_leaves_the_old_db_and_reruns(reference, tmp_path: Path) -> None:
    shards, out = reference[0], tmp_path / "h.ddb"
    out.write_bytes(b"an older database the user keeps")
    killed = run_script(tmp_path, "merge", str(shards), "inside_merge", str(out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert out.read_bytes() == b"an older database the user keeps"  # never half-replaced
    assert (tmp_path / "h.ddb.tmp").exists()  # SIGKILL leaves the temporary DB; the rerun removes it
    assert tables(merge_shards(shards, out, overwrite=True)) == reference[1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("h.ddb")) == ["h.ddb"]


# ------------------------------------------------------------------------------------------------ full disks
@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs (root only: mount needs CAP_SYS_ADMIN), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a size-limited tmpfs, and mounting one needs root")
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte with one file; delete it to free the space."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".wal"))


def test_full_disk_during_harvest_is_one_clear_error_and_resumes(model_and_sae, small_disk: Path, tmp_path: Path):
    model, sae = model_and_sae
    kwargs = dict(top_k=4, batch_size=2, checkpoint_every=1, progress=False)
    ref = harvest(model, sae, PROMPTS, tmp_path / "ref", **kwargs)
    fillers: list[Path] = []

    def fill_after_two(done: int) -> None:
        if done == 4 and not fillers:
            fillers.append(fill(small_disk))

    with pytest.raises(NoSpaceLeftError) as caught:
        harvest(model, sae, PROMPTS, small_disk / "out", on_batch=fill_after_two, **kwargs)
    message = str(caught.value)
    assert message.startswith(f"no space left on {small_disk / 'out'}") and "rerun the same command" in message
    assert "checkpoint at 2 of 14 prompts is intact" in message
    shard = next((small_disk / "out").glob("shard-*"))
    assert leftovers(small_disk) == []
    assert json.loads((shard / "progress.json").read_text())["done"] == 2  # the last complete checkpoint
    fillers[0].unlink()
    batches: list[int] = []
    harvest(model, sae, PROMPTS, small_disk / "out", on_batch=batches.append, **kwargs)
    assert batches[0] == 4  # resumed after the intact checkpoint
    a = merge_shards(tmp_path / "ref", tmp_path / "a.ddb")
    b = merge_shards(small_disk / "out", tmp_path / "b.ddb")
    assert tables(a) == tables(b) and ref.complete


def test_full_disk_during_merge_is_one_clear_error(model_and_sae, small_disk: Path, tmp_path: Path, capsys):
    from r1_plugin.cli import main

    model, sae = model_and_sae
    harvest(model, sae, PROMPTS, tmp_path / "shards", top_k=4, batch_size=4, progress=False)
    reference = tables(merge_shards(tmp_path / "shards", tmp_path / "ref.ddb"))
    (small_disk / "old.ddb").write_bytes(b"kept")
    filler = fill(small_disk)
    with pytest.raises(NoSpaceLeftError, match=f"^no space left on {small_disk}.*the shards are untouched"):
        merge_shards(tmp_path / "shards", small_disk / "h.ddb")
    assert leftovers(small_disk) == [] and not (small_disk / "h.ddb").exists()
    with pytest.raises(NoSpaceLeftError, match="old.ddb is unchanged"):
        merge_shards(tmp_path / "shards", small_disk / "old.ddb", overwrite=True)
    assert (small_disk / "old.ddb").read_bytes() == b"kept" and leftovers(small_disk) == []
    # the CLI: one line, exit code 2, no traceback
    assert main(["features", "merge", str(tmp_path / "shards"), "-o", str(small_disk / "c.ddb")]) == 2
    err = capsys.readouterr().err
    assert "no space left on" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    filler.unlink()
    assert tables(merge_shards(tmp_path / "shards", small_disk / "h.ddb")) == reference


def test_unwritable_output_is_one_line_not_called_damaged(reference, tmp_path: Path, capsys) -> None:
    """Merging onto a read-only disk (root ignores file modes, so a read-only tmpfs): exit 2, one line that says
    there is no permission to write, and not "is the file damaged? fetch it again"."""
    from r1_plugin.cli import main

    if os.geteuid() != 0:
        pytest.skip("a read-only output is simulated with a read-only tmpfs, and mounting one needs root")
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        assert main(["features", "merge", str(reference[0]), "-o", str(ro / "h.ddb")]) == 2
        err = capsys.readouterr().err
        assert "Read-only file system" in err and "no permission to write there" in err
        assert "damaged" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    finally:
        subprocess.run(["umount", str(ro)], check=False)
