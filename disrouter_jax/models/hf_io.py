"""Hugging Face checkpoints in and out: one declarative table between HF tensors and NNX params.

Loading builds the model abstractly (``nnx.eval_shape``: shapes, no memory), resolves every
parameter's target sharding from its logical axes, then reads the tensors one at a time from
memory-mapped safetensors and places each straight onto its sharding. Each device receives only
its own slice (``make_array_from_callback``), so host memory peaks at about one tensor and no
device ever holds the whole model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disrouter_jax import sharding as sharding_lib
from disrouter_jax.models.config import Qwen2Config
from disrouter_jax.models.qwen2 import Qwen2
from disrouter_jax.models.safetensors_io import SafetensorsError, SafetensorsFile, save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One HF tensor <-> one model parameter.

    ``linear_in_dims``: HF stores linear weights as ``[out, in]``; ours are ``[*in, *out]`` with
    the first ``linear_in_dims`` dimensions being the input. ``None`` means the tensor keeps its
    element order (embeddings, norms, biases) and is only reshaped: to 1-D in HF unless
    ``keep_shape`` (the embedding table).
    """

    hf_name: str
    model_path: tuple[str, ...]
    linear_in_dims: int | None = None
    keep_shape: bool = False

    def hf_shape(self, model_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.linear_in_dims is None:
            return tuple(model_shape) if self.keep_shape else (math.prod(model_shape),)
        k = self.linear_in_dims
        return (math.prod(model_shape[k:]), math.prod(model_shape[:k]))

    def to_model(self, hf_array: np.ndarray, model_shape: tuple[int, ...]) -> np.ndarray:
        if self.linear_in_dims is not None:
            hf_array = hf_array.T
        return hf_array.reshape(model_shape)

    def to_hf(self, model_array: np.ndarray) -> np.ndarray:
        hf_shape = self.hf_shape(model_array.shape)
        if self.linear_in_dims is None:
            return model_array.reshape(hf_shape)
        return model_array.reshape(hf_shape[::-1]).T


_LAYER = "model.layers.{i}."
QWEN2_TABLE: tuple[TensorRule, ...] = (
    TensorRule("model.embed_tokens.weight", ("embedding_vd",), keep_shape=True),
    TensorRule("model.norm.weight", ("final_norm", "scale_d")),
    TensorRule("lm_head.weight", ("lm_head_dv",), linear_in_dims=1),
    TensorRule(_LAYER + "input_layernorm.weight", ("layers", "{i}", "input_norm", "scale_d")),
    TensorRule(
        _LAYER + "post_attention_layernorm.weight", ("layers", "{i}", "post_attn_norm", "scale_d")
    ),
    TensorRule(_LAYER + "self_attn.q_proj.weight", ("layers", "{i}", "attn", "q_weight_dnh"), 1),
    TensorRule(_LAYER + "self_attn.q_proj.bias", ("layers", "{i}", "attn", "q_bias_nh")),
    TensorRule(_LAYER + "self_attn.k_proj.weight", ("layers", "{i}", "attn", "k_weight_dkh"), 1),
    TensorRule(_LAYER + "self_attn.k_proj.bias", ("layers", "{i}", "attn", "k_bias_kh")),
    TensorRule(_LAYER + "self_attn.v_proj.weight", ("layers", "{i}", "attn", "v_weight_dkh"), 1),
    TensorRule(_LAYER + "self_attn.v_proj.bias", ("layers", "{i}", "attn", "v_bias_kh")),
    TensorRule(_LAYER + "self_attn.o_proj.weight", ("layers", "{i}", "attn", "o_weight_nhd"), 2),
    TensorRule(_LAYER + "mlp.gate_proj.weight", ("layers", "{i}", "mlp", "gate_weight_df"), 1),
    TensorRule(_LAYER + "mlp.up_proj.weight", ("layers", "{i}", "mlp", "up_weight_df"), 1),
    TensorRule(_LAYER + "mlp.down_proj.weight", ("layers", "{i}", "mlp", "down_weight_fd"), 1),
)


def expand_table(config: Qwen2Config) -> dict[str, tuple[TensorRule, tuple]]:
    """HF name -> (rule, concrete model path) for every tensor this config has."""
    out = {}
    for rule in QWEN2_TABLE:
        if rule.hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        layers = range(config.num_layers) if "{i}" in rule.hf_name else [None]
        for i in layers:
            name = rule.hf_name.format(i=i)
            path = tuple(i if part == "{i}" else part for part in rule.model_path)
            out[name] = (rule, path)
    return out


class CheckpointError(ValueError):
    pass


def resolve_checkpoint_dir(path_or_id: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a Hub id, downloaded when the machine is online."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint directory, found a file")
    name = str(path_or_id)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise FileNotFoundError(f"{path}: checkpoint directory does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
            )
        )
    except Exception as err:  # offline, unknown repo, gated, ...
        raise FileNotFoundError(
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face "
            f"Hub ({type(err).__name__}: {err}). Offline, download it elsewhere (e.g. "
            f"`huggingface-cli download {name} --local-dir DIR`), copy DIR here and pass its path."
        ) from err


def _open_shards(ckpt_dir: Path) -> dict[str, SafetensorsFile]:
    """HF tensor name -> the file that holds it."""
    index_path = ckpt_dir / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({err})") from err
        files = {}
        for filename in sorted(set(weight_map.values())):
            if not (ckpt_dir / filename).is_file():
                raise CheckpointError(f"{index_path}: lists {filename}, which does not exist")
            files[filename] = SafetensorsFile(ckpt_dir / filename)
        located = {}
        for name, filename in weight_map.items():
            if name not in files[filename].keys():
                raise CheckpointError(f"{ckpt_dir / filename}: index says it holds {name!r}; it does not")
            located[name] = files[filename]
        return located
    single = ckpt_dir / SINGLE_FILE
    if single.is_file():
        file = SafetensorsFile(single)
        return {name: file for name in file.keys()}
    raise CheckpointError(
        f"{ckpt_dir}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints are supported)"
    )


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    param_dtype=None,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
    attention_impl: str = "auto",
    float32_head: bool = False,
) -> Qwen2:
    """Loads a Hugging Face Qwen2 checkpoint directory as a (sharded) NNX model."""
    ckpt_dir = resolve_checkpoint_dir(path)
    config = Qwen2Config.from_json(ckpt_dir / "config.json")
    param_dtype = dtype if param_dtype is None else param_dtype
    ctx = None if mesh is None else sharding_lib.ShardingContext(mesh, sharding_lib.freeze_rules(rules))
    abstract = nnx.eval_shape(
        lambda: Qwen2(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0), sharding=ctx,
                      attention_impl=attention_impl, float32_head=float32_head)
    )
    graphdef, state = nnx.split(abstract)
    variables = dict(nnx.to_flat_state(state))
    table = expand_table(config)
    located = _open_shards(ckpt_dir)

    # Validate everything from the headers before a single tensor is read.
    ignored = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(set(located) - set(table) - ignored)
    missing = sorted(set(table) - set(located))
    if missing:
        raise CheckpointError(f"{ckpt_dir}: missing tensors: {', '.join(missing[:10])}"
                              + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    if unexpected:
        raise CheckpointError(f"{ckpt_dir}: unexpected tensors: {', '.join(unexpected[:10])}"
                              + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    for name, (rule, model_path) in table.items():
        want = rule.hf_shape(variables[model_path].get_value().shape)
        have = located[name].shape(name)
        if tuple(have) != tuple(want):
            raise CheckpointError(
                f"{located[name].path}: tensor {name!r} has shape {list(have)}, "
                f"but config.json implies {list(want)}"
            )

    for name, (rule, model_path) in table.items():
        variable = variables[model_path]
        target = variable.get_value()
        array = rule.to_model(located[name].get(name), target.shape).astype(target.dtype)
        variable.set_value(_place(array, variable, mesh, rules))
    return nnx.merge(graphdef, state)


def _place(array: np.ndarray, variable, mesh, rules) -> jax.Array:
    if mesh is None:
        return jax.device_put(array)
    axes = variable.get_metadata()["logical_axes"]
    target = sharding_lib.named_sharding(axes, array.shape, mesh, rules)
    return jax.make_array_from_callback(array.shape, target, lambda index: array[index])


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_pretrained(
    model: Qwen2,
    out_dir: str | os.PathLike,
    *,
    dtype=None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Writes config.json + safetensors that ``transformers`` loads as ``Qwen2ForCausalLM``.

    Tensors are gathered one at a time; files are written atomically. An existing checkpoint in
    ``out_dir`` is only replaced with ``overwrite=True``. In multi-process runs every process must
    call this (gathers are collective); only process 0 writes.
    """
    out_dir = Path(out_dir)
    config = model.config
    existing = [p.name for p in (out_dir / "config.json", out_dir / SINGLE_FILE, out_dir / INDEX_FILE)
                if p.exists()]
    if jax.process_count() > 1:
        # Process 0 decides: another process could otherwise see files process 0 just wrote.
        from jax.experimental import multihost_utils

        found = int(multihost_utils.broadcast_one_to_all(np.int32(bool(existing))))
        existing = existing if jax.process_index() == 0 else (["a checkpoint"] if found else [])
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir}: already holds a checkpoint ({', '.join(existing)}); "
                              "pass overwrite=True to replace it")
    writer = jax.process_index() == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    variables = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    table = expand_table(config)

    def out_dtype(variable):
        return np.dtype(dtype) if dtype is not None else np.dtype(variable.get_value().dtype)

    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for name, (_, path) in table.items():
        value = variables[path].get_value()
        nbytes = value.size * out_dtype(variables[path]).itemsize
        if shards[-1] and shard_bytes + nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += nbytes

    filenames = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    )
    weight_map, total_bytes = {}, 0
    for filename, names in zip(filenames, shards):
        tensors = {}
        for name in names:
            rule, path = table[name]
            tensors[name] = rule.to_hf(_to_host(variables[path].get_value())).astype(
                out_dtype(variables[path])
            )
            weight_map[name] = filename
            total_bytes += tensors[name].nbytes
        if writer:
            save_file(tensors, out_dir / filename)
    if writer:
        if len(shards) > 1:
            index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
            _write_json(out_dir / INDEX_FILE, index)
        hf_config = config.to_hf_dict()
        saved_dtype = out_dtype(next(iter(variables.values())))
        hf_config["torch_dtype"] = "bfloat16" if saved_dtype == jnp.bfloat16 else saved_dtype.name
        _write_json(out_dir / "config.json", hf_config)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"save_pretrained:{out_dir}")
    return out_dir


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


__all__ = [
    "CheckpointError", "QWEN2_TABLE", "SafetensorsError", "TensorRule", "expand_table",
    "from_pretrained", "resolve_checkpoint_dir", "save_pretrained",
]
