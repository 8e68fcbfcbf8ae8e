"""The names of the Qwen2-only model API, for the callers written before families.

The toy pool and ``pipeline`` still import ``qwen2.Qwen2`` / ``qwen2.from_pretrained`` /
``qwen2.save_pretrained``. Each name here is the family-agnostic one it always stood for: the
decoder (every family), loading and export of any family's checkpoint (``hf_io``); only
``Qwen2Config`` is the Qwen2 family's own. New code imports ``decoder``, ``hf_io`` and
``families``; once no caller imports this module it goes. Nothing in the package imports it
back, so there is no circle: the model knows no files, ``hf_io`` knows the model.
"""

from disrouter_jax.models.attention import attention, resolve_attention_impl
from disrouter_jax.models.decoder import Decoder as Qwen2
from disrouter_jax.models.decoder import default_positions
from disrouter_jax.models.families.qwen2 import Qwen2Config
from disrouter_jax.models.hf_io import from_pretrained, save_pretrained
from disrouter_jax.models.kv_cache import KEY_CACHE_AXES, VALUE_CACHE_AXES, KVCache, init_cache
from disrouter_jax.models.layers import rows_matmul

__all__ = ["KEY_CACHE_AXES", "KVCache", "Qwen2", "Qwen2Config", "VALUE_CACHE_AXES", "attention",
           "default_positions", "from_pretrained", "init_cache", "resolve_attention_impl", "rows_matmul",
           "save_pretrained"]
