"""Scenario instructions and the refusal text: the prompt-side contracts, defined once.

Every wording a model sees about routing lives here: the refusal, the scenario (α) instructions,
and the per-answer-type format instructions.

Unknown-α policy: α must be one of the paper's scenarios, 0.2 (Performance First), 0.5 (Balance),
0.8 (Cost First); a float within 1e-6 of one of them is snapped to it. Anything else raises a
ValueError listing the supported values (no interpolation of the wording: a model trained on three
instructions has never seen a fourth). α=None means "no scenario": a plain prompt without the
cascade/refusal instruction (used for labelling and pre-training), rendered with the chat
template's default system prompt.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Mapping, Sequence

# The exact reply that forwards a query to the next agent in the cascade.
REFUSAL = "I don't know!"


@dataclasses.dataclass(frozen=True)
class Scenario:
    alpha: float
    name: str
    guidance: str  # the trade-off sentence specific to this scenario


SCENARIOS: Mapping[float, Scenario] = {
    0.2: Scenario(
        alpha=0.2,
        name="Performance First",
        guidance="Getting the answer right matters far more than cost: answer only if you are highly "
        "confident that your answer is correct.",
    ),
    0.5: Scenario(
        alpha=0.5,
        name="Balance",
        guidance="Getting the answer right and keeping cost low both matter: answer if you are fairly "
        "confident that your answer is correct.",
    ),
    0.8: Scenario(
        alpha=0.8,
        name="Cost First",
        guidance="Keeping cost low matters most: answer unless your answer is more likely wrong than right.",
    ),
}
SUPPORTED_ALPHAS: tuple[float, ...] = tuple(sorted(SCENARIOS))
ALPHA_TOLERANCE = 1e-6

CASCADE_CONTEXT = (
    "You are one of several AI assistants in a cascade ordered from the cheapest to the most capable. "
    "A question goes to the cheapest assistant first; an assistant that declines passes it on to the "
    "next, more capable and more expensive one."
)
REFUSAL_RULE = f'If you are not confident enough to answer, reply exactly "{REFUSAL}" and nothing else.'

# Answer-format instructions, appended to the user message. Tasks pick one by answer type or
# override it (e.g. DROP allows numbers and dates); toy tasks may pass their own or "".
NUMBER_FORMAT = (
    'Solve the problem step by step, then give the final answer on the last line in the form '
    '"The answer is N", where N is a number.'
)
CHOICE_FORMAT = 'Answer with the letter of the correct option, in the form "Answer: X".'
SPAN_FORMAT = 'Answer with a short span copied from the passage, in the form "Answer: <answer>".'
FORMAT_INSTRUCTIONS: Mapping[str, str] = {"number": NUMBER_FORMAT, "choice": CHOICE_FORMAT, "span": SPAN_FORMAT}


def resolve_alpha(alpha: float) -> float:
    """The supported α equal (within 1e-6) to `alpha`; ValueError otherwise (see module docstring)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(f"scenario alpha must be a number, got {alpha!r}")
    for supported in SUPPORTED_ALPHAS:
        if abs(float(alpha) - supported) <= ALPHA_TOLERANCE:
            return supported
    listed = ", ".join(f"{a} ({SCENARIOS[a].name})" for a in SUPPORTED_ALPHAS)
    raise ValueError(f"unsupported scenario alpha={alpha!r}; supported: {listed}")


def scenario_for(alpha: float) -> Scenario:
    return SCENARIOS[resolve_alpha(alpha)]


def scenario_instruction(alpha: float) -> str:
    """System-message text for scenario α: cascade context, the trade-off, the refusal rule."""
    scenario = scenario_for(alpha)
    return f"{CASCADE_CONTEXT}\nScenario: {scenario.name}. {scenario.guidance}\n{REFUSAL_RULE}"


def build_messages(question_text: str, *, alpha: float | None, task_format_instruction: str) -> list[dict[str, str]]:
    """Chat messages for one question.

    alpha given: [system: scenario_instruction(alpha), user: question + format instruction].
    alpha None: [user: question + format instruction] only (plain prompt, template default system).
    """
    if not question_text.strip():
        raise ValueError("build_messages: empty question_text")
    user = question_text if not task_format_instruction else f"{question_text}\n\n{task_format_instruction}"
    messages = [{"role": "user", "content": user}]
    if alpha is not None:
        messages.insert(0, {"role": "system", "content": scenario_instruction(alpha)})
    return messages


def render_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt string the model continues: the tokenizer's chat template with the generation prompt."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"render_prompt: tokenizer {type(tokenizer).__name__} has no chat_template")
    for i, message in enumerate(messages):
        if not {"role", "content"} <= set(message) or not isinstance(message.get("content"), str):
            raise ValueError(f"render_prompt: message {i} needs string 'role' and 'content', got {message!r}")
    rendered = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    if not isinstance(rendered, str):
        raise TypeError(f"render_prompt: apply_chat_template returned {type(rendered).__name__}, expected str")
    return rendered
