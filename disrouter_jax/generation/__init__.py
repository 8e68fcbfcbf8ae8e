"""Batched text generation on the NNX decoder (any family): jitted prefill + ``while_loop`` decode.

- ``generate(model, prompts, ...)`` token ids in, ``[prompt][sample] -> Generation`` out.
- ``generate_chat(model, tokenizer, messages_list, ...)`` chat messages in, strings out.
"""

from disrouter_jax.generation.buckets import BucketConfig, plan_batches, round_up
from disrouter_jax.generation.chat import chat_prompt_ids, generate_chat, stop_token_ids_for
from disrouter_jax.generation.engine import TRACE_COUNTS, generate
from disrouter_jax.generation.inputs import default_stop_token_ids
from disrouter_jax.generation.results import FINISH_REASONS, Generation
from disrouter_jax.generation.sampling import SamplingMode, sample_tokens, token_logprobs

__all__ = [
    "BucketConfig",
    "FINISH_REASONS",
    "Generation",
    "SamplingMode",
    "TRACE_COUNTS",
    "chat_prompt_ids",
    "default_stop_token_ids",
    "generate",
    "generate_chat",
    "plan_batches",
    "round_up",
    "sample_tokens",
    "stop_token_ids_for",
    "token_logprobs",
]
