"""Benchmark tasks: loading (Hub or original release files), prompts, and answer checking.

Typical use:
    from disrouter_jax.tasks import get_task, load_task
    task = get_task("gsm8k")
    examples = load_task("gsm8k", path="../shared/data/gsm8k", split="test")
    prompt = task.prompt(tokenizer, examples[0], alpha=0.5)
    verdict = task.check(examples[0], response)   # Verdict(correct, refused, extracted, score)
"""

from disrouter_jax.tasks.base import LoadResult, Task, choice_example, index_of_label, question_text
from disrouter_jax.tasks.checkers import (
    check_choice,
    check_example,
    check_number,
    check_span,
    exact_match,
    extract_choice,
    extract_number,
    extract_span,
    is_refusal,
    normalize_answer,
    refusal_status,
    token_f1,
)
from disrouter_jax.tasks.example import OPTION_LETTERS, BadRow, DataFileError, Example, Verdict
from disrouter_jax.tasks.mixture import Mixture, build_mixture, load_mixture
from disrouter_jax.tasks.prompts import (
    FORMAT_INSTRUCTIONS,
    REFUSAL,
    SCENARIOS,
    SUPPORTED_ALPHAS,
    Scenario,
    build_messages,
    render_prompt,
    resolve_alpha,
    scenario_instruction,
)
from disrouter_jax.tasks.registry import (
    IN_DOMAIN,
    OUT_OF_DOMAIN,
    PAPER_TASKS,
    TASKS,
    example_jsonl_task,
    get_task,
    load_task,
    register_task,
    write_examples_jsonl,
)

__all__ = [
    "BadRow", "DataFileError", "Example", "FORMAT_INSTRUCTIONS", "IN_DOMAIN", "LoadResult", "Mixture", "OPTION_LETTERS",
    "OUT_OF_DOMAIN", "PAPER_TASKS", "REFUSAL", "SCENARIOS", "SUPPORTED_ALPHAS", "Scenario", "TASKS", "Task",
    "Verdict", "build_messages", "build_mixture", "check_choice", "check_example", "check_number",
    "check_span", "choice_example", "exact_match", "example_jsonl_task", "extract_choice",
    "extract_number", "extract_span", "get_task", "index_of_label", "is_refusal", "load_mixture",
    "load_task", "normalize_answer", "question_text", "refusal_status", "register_task", "render_prompt",
    "resolve_alpha", "scenario_instruction", "token_f1", "write_examples_jsonl",
]
