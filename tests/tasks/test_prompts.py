"""Scenario wording, α policy, message building and rendered-prompt snapshots (Qwen2.5 template)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from disrouter_jax.tasks import get_task, load_task, prompts
from disrouter_jax.tasks.prompts import REFUSAL

from .conftest import data_dir

SNAPSHOT_DIR = Path(__file__).parent / "prompt_snapshots"
SCENARIO_KEYS = {None: "plain", 0.2: "alpha0.2", 0.5: "alpha0.5", 0.8: "alpha0.8"}
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_scenarios_are_the_papers_three():
    assert prompts.SUPPORTED_ALPHAS == (0.2, 0.5, 0.8)
    names = {a: prompts.SCENARIOS[a].name for a in prompts.SUPPORTED_ALPHAS}
    assert names == {0.2: "Performance First", 0.5: "Balance", 0.8: "Cost First"}


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8])
def test_scenario_instruction_names_the_scenario_and_the_exact_refusal(alpha):
    text = prompts.scenario_instruction(alpha)
    assert f"Scenario: {prompts.SCENARIOS[alpha].name}." in text
    assert f'reply exactly "{REFUSAL}"' in text
    others = [prompts.SCENARIOS[a].guidance for a in prompts.SUPPORTED_ALPHAS if a != alpha]
    assert prompts.SCENARIOS[alpha].guidance in text and not any(g in text for g in others)


def test_instructions_differ_between_scenarios():
    texts = {prompts.scenario_instruction(a) for a in prompts.SUPPORTED_ALPHAS}
    assert len(texts) == 3


def test_alpha_within_tolerance_snaps_to_the_supported_value():
    assert prompts.resolve_alpha(0.5 + 1e-9) == 0.5
    assert prompts.resolve_alpha(0.2 - 5e-7) == 0.2
    assert prompts.scenario_instruction(0.8000000001) == prompts.scenario_instruction(0.8)
    assert prompts.resolve_alpha(1 / 5) == 0.2


@pytest.mark.parametrize("alpha", [0.3, 0.0, 1.0, 0.21, -0.5, float("nan")])
def test_unknown_alpha_is_a_clear_error(alpha):
    with pytest.raises(ValueError, match=r"supported: 0\.2 \(Performance First\), 0\.5 \(Balance\), 0\.8 \(Cost First\)"):
        prompts.scenario_instruction(alpha)


@pytest.mark.parametrize("alpha", ["0.5", True, None])
def test_non_numeric_alpha_is_rejected(alpha):
    with pytest.raises(ValueError, match="must be a number"):
        prompts.resolve_alpha(alpha)


def test_build_messages_with_and_without_scenario():
    with_alpha = prompts.build_messages("Question: 1+1?", alpha=0.5, task_format_instruction="Reply with a number.")
    assert with_alpha == [
        {"role": "system", "content": prompts.scenario_instruction(0.5)},
        {"role": "user", "content": "Question: 1+1?\n\nReply with a number."},
    ]
    plain = prompts.build_messages("Question: 1+1?", alpha=None, task_format_instruction="Reply with a number.")
    assert plain == [{"role": "user", "content": "Question: 1+1?\n\nReply with a number."}]
    # toy tasks may have no format instruction at all
    assert prompts.build_messages("Q", alpha=None, task_format_instruction="") == [{"role": "user", "content": "Q"}]
    with pytest.raises(ValueError, match="empty question"):
        prompts.build_messages("  ", alpha=None, task_format_instruction="")
    with pytest.raises(ValueError, match="unsupported scenario alpha"):
        prompts.build_messages("Q", alpha=0.4, task_format_instruction="")


def test_render_prompt_uses_qwen_chatml_and_its_default_system_prompt(qwen_tokenizer):
    plain = prompts.render_prompt(qwen_tokenizer, [{"role": "user", "content": "Hi"}])
    assert plain == f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    scenario = prompts.render_prompt(qwen_tokenizer, prompts.build_messages("Hi", alpha=0.2, task_format_instruction=""))
    assert scenario == (
        f"<|im_start|>system\n{prompts.scenario_instruction(0.2)}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert QWEN_DEFAULT_SYSTEM not in scenario


def test_render_prompt_rejects_a_tokenizer_without_template_and_bad_messages(qwen_tokenizer):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="no chat_template"):
        prompts.render_prompt(NoTemplate(), [{"role": "user", "content": "Hi"}])
    with pytest.raises(ValueError, match="message 0"):
        prompts.render_prompt(qwen_tokenizer, [{"content": "Hi"}])


def test_gsm8k_prompt_exact_text(qwen_tokenizer):
    """One prompt written out by hand, independent of the snapshot files."""
    examples = load_task("gsm8k", data_dir("gsm8k"), "test")
    rendered = get_task("gsm8k").prompt(qwen_tokenizer, examples[1], alpha=0.5)
    assert rendered == (
        "<|im_start|>system\n"
        "You are one of several AI assistants in a cascade ordered from the cheapest to the most capable. "
        "A question goes to the cheapest assistant first; an assistant that declines passes it on to the next, "
        "more capable and more expensive one.\n"
        "Scenario: Balance. Getting the answer right and keeping cost low both matter: answer if you are fairly "
        "confident that your answer is correct.\n"
        "If you are not confident enough to answer, reply exactly \"I don't know!\" and nothing else.<|im_end|>\n"
        "<|im_start|>user\n"
        "Question: A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total "
        "does it take?\n\n"
        "Solve the problem step by step, then give the final answer on the last line in the form "
        "\"The answer is N\", where N is a number.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# One real row per task type: (task, data folder, split, example id).
SNAPSHOT_ROWS = [
    ("gsm8k", "gsm8k", "test", "test-1"),
    ("arc", "arc", "validation", "NYSEDREGENTS_2014_8_20"),  # numeric labels 1-4 shown as A-D
    ("race", "race", "validation", "dev/middle/13-0"),  # passage + cloze question
    ("hellaswag", "hellaswag", "validation", "670"),  # WikiHow markup cleaned
    ("squad", "squad", "validation", "56be4db0acb8001400a502ee"),  # span from a passage
    ("drop", "drop", "validation", "ac6ba235-3024-4f63-a6ab-730a14def4cb"),  # DROP's own format line
]


@pytest.mark.parametrize("alpha", list(SCENARIO_KEYS))
@pytest.mark.parametrize("task_name,folder,split,example_id", SNAPSHOT_ROWS)
def test_prompt_snapshot(qwen_tokenizer, task_name, folder, split, example_id, alpha):
    examples = {e.id: e for e in load_task(task_name, data_dir(folder), split)}
    rendered = get_task(task_name).prompt(qwen_tokenizer, examples[example_id], alpha=alpha)
    snapshot = SNAPSHOT_DIR / f"{task_name}__{SCENARIO_KEYS[alpha]}.txt"
    if os.environ.get("UPDATE_PROMPT_SNAPSHOTS") == "1":
        SNAPSHOT_DIR.mkdir(exist_ok=True)
        snapshot.write_text(rendered, encoding="utf-8")
    assert rendered == snapshot.read_text(encoding="utf-8")
