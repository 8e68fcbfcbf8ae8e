"""Checkpoint I/O: round trips through transformers, sharded files, and every bad-checkpoint case."""

import json
import shutil
import struct

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from disrouter_jax.models import hf_io, qwen2
from disrouter_jax.models.safetensors_io import SafetensorsFile, save_file

IDS = np.array([[0, 0, 3, 9, 27, 5], [1, 2, 3, 4, 5, 6]])
MASK = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def reference_logits(ckpt_dir):
    model = AutoModelForCausalLM.from_pretrained(ckpt_dir).eval()
    pos = np.maximum(np.cumsum(MASK, -1) - 1, 0)
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK),
                     position_ids=torch.tensor(pos)).logits.numpy()


@pytest.mark.parametrize("name", ["gqa2", "tied_gqa7"])
def test_round_trip_through_transformers(tiny_checkpoint, tmp_path, name):
    src = tiny_checkpoint(name)
    model = qwen2.from_pretrained(src)
    out = qwen2.save_pretrained(model, tmp_path / "export")
    assert (out / "model.safetensors").is_file()
    before, after = reference_logits(src), reference_logits(out)
    real = MASK.astype(bool)
    assert np.abs(before - after)[real].max() <= 1e-6
    ours = np.asarray(qwen2.from_pretrained(out)(jnp.asarray(IDS), attention_mask_bt=jnp.asarray(MASK)))
    assert np.abs(ours - before)[real].max() <= 1e-4


def test_sharded_save_and_load(tiny_checkpoint, tmp_path):
    model = qwen2.from_pretrained(tiny_checkpoint("gqa2"))
    out = qwen2.save_pretrained(model, tmp_path / "sharded", max_shard_bytes=8_000)
    index = json.loads((out / hf_io.INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and not (out / hf_io.SINGLE_FILE).exists()
    real = MASK.astype(bool)
    np.testing.assert_allclose(
        reference_logits(out)[real], reference_logits(tiny_checkpoint("gqa2"))[real], atol=1e-6
    )
    again = qwen2.from_pretrained(out)
    np.testing.assert_array_equal(
        np.asarray(again.layers[1].mlp.down_weight_fd[...]),
        np.asarray(model.layers[1].mlp.down_weight_fd[...]),
    )


def test_bfloat16_export_loads_in_transformers(tiny_checkpoint, tmp_path):
    model = qwen2.from_pretrained(tiny_checkpoint("gqa2"), dtype=jnp.bfloat16)
    out = qwen2.save_pretrained(model, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
    # Every tensor holds the float32 checkpoint's values rounded to bfloat16, bit for bit (torch's
    # round-to-nearest-even cast is the reference), under the same names and shapes.
    source = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("gqa2"), dtype=torch.float32).state_dict()
    exported = hf.state_dict()
    assert sorted(exported) == sorted(source)
    for name, tensor in source.items():
        assert exported[name].dtype == torch.bfloat16, name
        assert torch.equal(exported[name], tensor.to(torch.bfloat16)), name


def test_existing_checkpoint_is_not_overwritten(tiny_checkpoint, tmp_path):
    model = qwen2.from_pretrained(tiny_checkpoint("gqa2"))
    out = qwen2.save_pretrained(model, tmp_path / "keep")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite=True"):
        qwen2.save_pretrained(model, out)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    qwen2.save_pretrained(model, out, overwrite=True)


# --- bad checkpoints ---------------------------------------------------------------------------


@pytest.fixture
def broken_copy(tiny_checkpoint, tmp_path):
    dst = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint("gqa2"), dst)
    return dst


def _rewrite(ckpt, edit):
    file = SafetensorsFile(ckpt / "model.safetensors")
    tensors = {name: np.array(file.get(name)) for name in file.keys()}
    edit(tensors)
    save_file(tensors, ckpt / "model.safetensors")


def test_missing_tensor(broken_copy):
    _rewrite(broken_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(hf_io.CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        qwen2.from_pretrained(broken_copy)


def test_unexpected_tensor(broken_copy):
    _rewrite(broken_copy, lambda t: t.update({"model.layers.0.self_attn.rotary.inv_freq": np.ones(4, np.float32)}))
    with pytest.raises(hf_io.CheckpointError, match=r"unexpected tensors: model\.layers\.0\.self_attn\.rotary\.inv_freq"):
        qwen2.from_pretrained(broken_copy)


def test_wrong_shape_names_both_shapes(broken_copy):
    _rewrite(broken_copy, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32), np.float32)}))
    with pytest.raises(hf_io.CheckpointError, match=r"k_proj\.weight' has shape \[8, 32\], but config\.json implies \[16, 32\]"):
        qwen2.from_pretrained(broken_copy)


def test_truncated_file(broken_copy):
    path = broken_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(hf_io.SafetensorsError, match="truncated"):
        qwen2.from_pretrained(broken_copy)


def test_corrupt_header(broken_copy):
    path = broken_copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    data[8:20] = b"#" * 12
    path.write_bytes(bytes(data))
    with pytest.raises(hf_io.SafetensorsError, match="corrupt JSON header"):
        qwen2.from_pretrained(broken_copy)
    path.write_bytes(struct.pack("<Q", 10**12) + bytes(data[8:]))
    with pytest.raises(hf_io.SafetensorsError, match="corrupt header length"):
        qwen2.from_pretrained(broken_copy)


def test_missing_config(broken_copy):
    (broken_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        qwen2.from_pretrained(broken_copy)


def test_no_weights(broken_copy):
    (broken_copy / "model.safetensors").unlink()
    with pytest.raises(hf_io.CheckpointError, match="no model.safetensors"):
        qwen2.from_pretrained(broken_copy)


def test_index_listing_a_missing_shard(tiny_checkpoint, tmp_path):
    out = qwen2.save_pretrained(qwen2.from_pretrained(tiny_checkpoint("gqa2")), tmp_path / "s",
                                max_shard_bytes=8_000)
    victim = sorted(out.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(hf_io.CheckpointError, match=f"lists {victim.name}, which does not exist"):
        qwen2.from_pretrained(out)


def test_offline_hub_id_explains_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="local-dir"):
        qwen2.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qwen2.from_pretrained("./no/such/dir")
