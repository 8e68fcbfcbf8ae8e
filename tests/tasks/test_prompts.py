"""Scenario wording, α policy, message building, and every task's rendered prompt under Qwen2.5's
published chat template (rendered by transformers' ``apply_chat_template``), against text written
out by hand from the original rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from disrouter_jax.tasks import get_task, load_task, prompts
from disrouter_jax.tasks.prompts import REFUSAL

from .conftest import QWEN2_5_CHAT_TEMPLATE, build_qwen_template_tokenizer, data_dir

PUBLISHED_TEMPLATE = Path(__file__).parent / "published_qwen2_5_chat_template.swift.txt"
# SHA-256 of the published template's UTF-8 bytes, computed from the public copy named in
# PUBLISHED_TEMPLATE (and equal for a second, independent public copy of tokenizer_config.json).
PUBLISHED_TEMPLATE_SHA256 = "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f"
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


def test_render_prompt_uses_qwen_chatml_and_its_default_system_prompt(qwen_template_tokenizer):
    plain = prompts.render_prompt(qwen_template_tokenizer, [{"role": "user", "content": "Hi"}])
    assert plain == f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    scenario = prompts.render_prompt(qwen_template_tokenizer, prompts.build_messages("Hi", alpha=0.2, task_format_instruction=""))
    assert scenario == (
        f"<|im_start|>system\n{prompts.scenario_instruction(0.2)}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert QWEN_DEFAULT_SYSTEM not in scenario


def test_render_prompt_rejects_a_tokenizer_without_template_and_bad_messages(qwen_template_tokenizer):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="no chat_template"):
        prompts.render_prompt(NoTemplate(), [{"role": "user", "content": "Hi"}])
    with pytest.raises(ValueError, match="message 0"):
        prompts.render_prompt(qwen_template_tokenizer, [{"content": "Hi"}])


def test_gsm8k_prompt_exact_text(qwen_template_tokenizer):
    """One prompt written out by hand, independent of the snapshot files."""
    examples = load_task("gsm8k", data_dir("gsm8k"), "test")
    rendered = get_task("gsm8k").prompt(qwen_template_tokenizer, examples[1], alpha=0.5)
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


# ------------------------------------------------------------------ Qwen2.5's published template


def _swift_unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            out.append({"n": "\n", "\\": "\\", '"': '"'}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def test_the_template_is_the_published_one_byte_for_byte():
    body = [line for line in PUBLISHED_TEMPLATE.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert len(body) == 1
    published = _swift_unescape(body[0])
    assert QWEN2_5_CHAT_TEMPLATE.encode("utf-8") == published.encode("utf-8")
    assert hashlib.sha256(published.encode("utf-8")).hexdigest() == PUBLISHED_TEMPLATE_SHA256
    assert build_qwen_template_tokenizer().chat_template == published  # what the prompt tests render with


def test_the_released_tokenizer_carries_the_same_template(real_qwen_tokenizer, qwen_template_tokenizer):
    """Only where ../shared/data/qwen2_5_tokenizer exists (skipped, naming it, otherwise)."""
    assert real_qwen_tokenizer.chat_template == QWEN2_5_CHAT_TEMPLATE
    messages = prompts.build_messages("Question: 1+1?", alpha=0.5, task_format_instruction="Reply with a number.")
    assert prompts.render_prompt(real_qwen_tokenizer, messages) == prompts.render_prompt(qwen_template_tokenizer, messages)


def test_tool_and_multi_turn_branches_render_as_published(qwen_template_tokenizer):
    """The template's other branches, rendered by transformers and written out by hand."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with_tools = qwen_template_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tools=[tool], tokenize=False, add_generation_prompt=True)
    assert with_tools == (
        f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}\n\n# Tools\n\nYou may call one or more functions to assist with "
        "the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + json.dumps(tool) + "\n</tools>\n\nFor each function call, return a json object with function name and "
        "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
        "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")
    turns = qwen_template_tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        tokenize=False, add_generation_prompt=False)
    assert turns == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"


# --------------------------------------------- every task's prompt, written out from the original rows

CASCADE = ("You are one of several AI assistants in a cascade ordered from the cheapest to the most capable. "
           "A question goes to the cheapest assistant first; an assistant that declines passes it on to the next, "
           "more capable and more expensive one.\n")
REFUSE = 'If you are not confident enough to answer, reply exactly "I don\'t know!" and nothing else.'
SYSTEM = {
    None: QWEN_DEFAULT_SYSTEM,  # no scenario: the template's default system prompt
    0.2: CASCADE + "Scenario: Performance First. Getting the answer right matters far more than cost: answer only "
                   "if you are highly confident that your answer is correct.\n" + REFUSE,
    0.5: CASCADE + "Scenario: Balance. Getting the answer right and keeping cost low both matter: answer if you are "
                   "fairly confident that your answer is correct.\n" + REFUSE,
    0.8: CASCADE + "Scenario: Cost First. Keeping cost low matters most: answer unless your answer is more likely "
                   "wrong than right.\n" + REFUSE,
}
CHOICE = 'Answer with the letter of the correct option, in the form "Answer: X".'


def _options(texts):
    return "Options:\n" + "\n".join(f"{letter}. {text}" for letter, text in zip("ABCDE", texts))


def _jsonl(path, key, value):
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row[key] == value:
            return row
    raise KeyError(value)


def _gsm8k(root):
    question = json.loads((root / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[1])["question"]
    return (f"Question: {question}\n\nSolve the problem step by step, then give the final answer on the last line "
            'in the form "The answer is N", where N is a number.')


def _arc(root):
    # Labels 1-4 in the file, shown as A-D.
    q = _jsonl(root / "arc" / "ARC-Challenge-Dev.jsonl", "id", "NYSEDREGENTS_2014_8_20")["question"]
    assert [c["label"] for c in q["choices"]] == ["1", "2", "3", "4"]
    stem = q["stem"].replace("\u0002", "")  # the release has a stray U+0002 before each "+": dropped
    return f"Question: {stem}\n\n{_options(c['text'] for c in q['choices'])}\n\n{CHOICE}"


def _race(root):
    row = json.loads((root / "race" / "RACE" / "dev" / "middle" / "13.txt").read_text(encoding="utf-8"))
    return f"Passage:\n{row['article']}\n\nQuestion: {row['questions'][0]}\n\n{_options(row['options'][0])}\n\n{CHOICE}"


def _hellaswag(root):
    # WikiHow markup ([header], [title], [step], [substeps]) dropped, the header ending a sentence.
    return ("Passage:\nSports and Fitness: How to bowl the leg spinner's variations. To bowl a googly, you grip the "
            "ball the same as you would for a leg break but hold it so your palm faces away from you. As you bowl, "
            "you bring your elbow close to your head and cock your wrist so that back of your hand faces the "
            "batsman. You spin the ball by rotating the fingers.\n\n"
            "Question: Which ending is the most plausible continuation of this text?\n\n" + _options([
                "If you're outside, the batsman only looks at the batsman as they dribble. If you're inside, the "
                "batsman lets you line up the batsman with you.",
                "Bring your wrist back towards your head so that the ball is back in front of your body and your fist "
                "will be holding the ball. A barbell is not needed for this style of bowl.",
                "If done properly, the ball should turn from off to leg for right handers. If the batsman comes out "
                "of his crease and misses the googly, he can be stumped.",
                "Only let the ball hit your side as you come out of the ball, not your core. Remember to rotate your "
                "wrist so your hand reaches over your head, not away from it.",
            ]) + f"\n\n{CHOICE}")


def _squad(root):
    data = json.loads((root / "squad" / "dev-v1.1.sample.json").read_text(encoding="utf-8"))["data"]
    context, question = next((p["context"], qa["question"]) for article in data for p in article["paragraphs"]
                             for qa in p["qas"] if qa["id"] == "56be4db0acb8001400a502ee")
    return (f"Passage:\n{context}\n\nQuestion: {question}\n\n"
            'Answer with a short span copied from the passage, in the form "Answer: <answer>".')


def _drop(root):
    passage = json.loads((root / "drop" / "drop_dataset_dev.nfl_1184.json").read_text(encoding="utf-8"))["nfl_1184"]
    question = next(qa["question"] for qa in passage["qa_pairs"]
                    if qa["query_id"] == "ac6ba235-3024-4f63-a6ab-730a14def4cb")
    text = passage["passage"].strip()  # the release's passage starts with a space: surrounding whitespace goes
    return (f"Passage:\n{text}\n\nQuestion: {question}\n\nThink briefly if needed, then give the final "
            'answer on the last line in the form "Answer: <answer>", where <answer> is a number, a date, or a short '
            "span from the passage.")


# One real row per task type: (task, data folder, split, example id, its user message by hand).
PROMPT_ROWS = [
    ("gsm8k", "gsm8k", "test", "test-1", _gsm8k),
    ("arc", "arc", "validation", "NYSEDREGENTS_2014_8_20", _arc),  # numeric labels 1-4 shown as A-D
    ("race", "race", "validation", "dev/middle/13-0", _race),  # passage + cloze question
    ("hellaswag", "hellaswag", "validation", "670", _hellaswag),  # WikiHow markup cleaned
    ("squad", "squad", "validation", "56be4db0acb8001400a502ee", _squad),  # span from a passage
    ("drop", "drop", "validation", "ac6ba235-3024-4f63-a6ab-730a14def4cb", _drop),  # DROP's own format line
]


@pytest.mark.parametrize("alpha", [None, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("task_name,folder,split,example_id,user_message", PROMPT_ROWS, ids=[r[0] for r in PROMPT_ROWS])
def test_prompt_is_the_hand_written_text(qwen_template_tokenizer, shared_data, task_name, folder, split, example_id,
                                         user_message, alpha):
    examples = {e.id: e for e in load_task(task_name, data_dir(folder), split)}
    rendered = get_task(task_name).prompt(qwen_template_tokenizer, examples[example_id], alpha=alpha)
    assert rendered == (f"<|im_start|>system\n{SYSTEM[alpha]}<|im_end|>\n"
                        f"<|im_start|>user\n{user_message(shared_data)}<|im_end|>\n<|im_start|>assistant\n")
