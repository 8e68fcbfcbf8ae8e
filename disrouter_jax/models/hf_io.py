"""Hugging Face checkpoints in and out, for every family: config.json picks the family
(``families``), whose declarative table maps HF tensors to NNX params (``tensor_table``).

Loading builds the model abstractly (``nnx.eval_shape``: shapes, no memory), resolves every
parameter's target sharding from its logical axes, then reads the tensors one at a time from
memory-mapped safetensors and places each straight onto its sharding. Each device receives only
its own slice (``make_array_from_callback``), so host memory peaks at about one tensor and no
device ever holds the whole model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disrouter_jax import sharding as sharding_lib
from disrouter_jax import storage
from disrouter_jax.models import families
from disrouter_jax.models.decoder import Decoder
from disrouter_jax.models.safetensors_io import SafetensorsError, SafetensorsFile, save_file
from disrouter_jax.models.tensor_table import LM_HEAD, TensorRule, expand_table

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


class CheckpointError(ValueError):
    pass


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` and not a path (``./x``, ``/x``, ``~/x``)."""
    return str(name).count("/") == 1 and not str(name).startswith((".", "/", "~"))


def resolve_checkpoint_dir(path_or_id: str | os.PathLike) -> Path:
    """A local directory as is; an object-store URL (``gs://``, ``s3://``) as its copy in the local
    cache (``storage.local_dir``); otherwise a Hub id, downloaded when the machine is online."""
    if storage.is_url(path_or_id):
        return storage.local_dir(path_or_id)
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint directory, found a file")
    name = str(path_or_id)
    if not looks_like_hub_id(name):
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
) -> Decoder:
    """Loads a Hugging Face checkpoint directory of any supported family as a (sharded) model."""
    ckpt_dir = resolve_checkpoint_dir(path)
    config = families.config_from_json(ckpt_dir / "config.json")
    param_dtype = dtype if param_dtype is None else param_dtype
    ctx = None if mesh is None else sharding_lib.ShardingContext(mesh, sharding_lib.freeze_rules(rules))
    abstract = nnx.eval_shape(
        lambda: Decoder(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0), sharding=ctx,
                        attention_impl=attention_impl, float32_head=float32_head)
    )
    graphdef, state = nnx.split(abstract)
    variables = dict(nnx.to_flat_state(state))
    table = model_table(config, variables)
    located = _open_shards(ckpt_dir)
    _check_headers(ckpt_dir, config, variables, table, located)  # before a single tensor is read

    for name, (rule, model_path) in table.items():
        variable = variables[model_path]
        target = variable.get_value()
        array = rule.to_model(located[name].get(name), target.shape).astype(target.dtype)
        variable.set_value(_place(array, variable, None if ctx is None else ctx.mesh, rules))
    return nnx.merge(graphdef, state)


def check_checkpoint(path: str | os.PathLike) -> "families.ModelConfig":
    """The config of a local checkpoint directory whose safetensors hold exactly the tensors, in
    the shapes, its config.json implies; read from the headers only (no tensor is loaded)."""
    ckpt_dir = Path(path)
    config = families.config_from_json(ckpt_dir / "config.json")
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    variables = dict(nnx.to_flat_state(nnx.state(abstract)))
    table = model_table(config, variables)
    _check_headers(ckpt_dir, config, variables, table, _open_shards(ckpt_dir))
    return config


def _check_headers(ckpt_dir: Path, config, variables, table, located) -> None:
    """CheckpointError unless the files hold exactly the table's tensors in their shapes."""
    ignored = {LM_HEAD} if config.tie_word_embeddings else set()
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


def model_table(config, variables) -> dict[str, tuple[TensorRule, tuple]]:
    """The family's table expanded for ``config``; it must name every parameter of the model
    (a table that misses one would leave it at its abstract placeholder)."""
    table = expand_table(config.tensor_table, config)
    uncovered = sorted(".".join(map(str, path)) for path in set(variables) - {p for _, p in table.values()})
    if uncovered:
        raise CheckpointError(f"{type(config).__name__}.tensor_table names no HF tensor for {uncovered}")
    return table


def _place(array: np.ndarray, variable, mesh, rules) -> jax.Array:
    if mesh is None:
        return jax.device_put(array)
    axes = variable.get_metadata()["logical_axes"]
    target = sharding_lib.named_sharding(axes, array.shape, mesh, rules)
    return jax.make_array_from_callback(array.shape, target, lambda index: array[index])


def save_pretrained(
    model: Decoder,
    out_dir: str | os.PathLike,
    *,
    dtype=None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    sync_name: str | None = None,
) -> Path:
    """Writes config.json + safetensors that ``transformers`` loads as the family's
    ``*ForCausalLM`` (a LoRA model: merge it first, ``training.lora.merge_lora``).

    Tensors are gathered one at a time; files are written atomically. An existing checkpoint in
    ``out_dir`` is only replaced with ``overwrite=True``. In multi-process runs every process must
    call this (gathers are collective); only process 0 writes. An object-store ``out_dir`` is
    written locally first and uploaded (config.json last), so a reader that finds config.json
    finds the weights. ``sync_name``: the processes' barrier name, when ``out_dir`` differs
    between them (a per-process staging directory).
    """
    if storage.is_url(out_dir):
        import tempfile

        url = storage.path(out_dir)
        if (url / "config.json").exists() and not overwrite:
            raise FileExistsError(f"{url}: already holds a checkpoint (config.json); pass overwrite=True to replace it")
        with tempfile.TemporaryDirectory(prefix="disrouter-save-") as tmp:
            save_pretrained(model, Path(tmp) / "model", dtype=dtype, max_shard_bytes=max_shard_bytes,
                            sync_name=sync_name or str(url))
            if jax.process_index() == 0:
                storage.upload_tree(Path(tmp) / "model", url, last=("config.json",))
        storage.barrier(f"save_pretrained:{sync_name or url}:uploaded")
        return url
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
    if not isinstance(model, Decoder):
        raise TypeError(f"save_pretrained expects a Decoder (merge LoRA first), got {type(model).__name__}")
    variables = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    table = model_table(config, variables)

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
            tensors[name] = rule.to_hf(sharding_lib.to_host(variables[path].get_value())).astype(
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

        multihost_utils.sync_global_devices(f"save_pretrained:{sync_name or out_dir}")
    return out_dir


def _write_json(path: Path, obj) -> None:
    storage.write_text(path, json.dumps(obj, indent=2) + "\n")


__all__ = [
    "CheckpointError", "SafetensorsError", "check_checkpoint", "from_pretrained", "model_table", "resolve_checkpoint_dir",
    "save_pretrained",
]
