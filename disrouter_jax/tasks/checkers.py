"""Answer checking that is robust to how instruct models really answer.

Pure string functions, no task knowledge beyond what is passed in. Three answer types:
  number  final-number extraction (GSM8K): \\boxed{}, "####", "The answer is N", else last number.
  choice  option-letter extraction: explicit answer statements first, then a bare letter, a letter
          heading the reply or its last line, the option text itself, then a last "(X)".
  span    SQuAD-official normalisation, exact match and token F1 (DROP adds number canonicalisation
          and the rule that a gold number must appear in the prediction).

Refusal policy (`is_refusal`): a response is a refusal iff, after stripping whitespace, quotes,
markdown emphasis and an optional "Answer:" label, it *starts* with "I don't know" (also "I dont
know", "I do not know", any case, straight or curly apostrophe) and that phrase is followed by the
end of the text or by punctuation / a line break. So "I don't know! The question is unclear." and
"i don't know." are refusals; "I don't know the exact year, but it is 1990" and
"The answer is B. I don't know why." are answers. Refusals are never scored as answers.
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Sequence

from disrouter_jax.tasks.example import OPTION_LETTERS, Example, Verdict

# ----------------------------------------------------------------------------------------- refusal

_DECORATION = " \t\r\n\"'`*_>#“”‘’«»"
_ANSWER_LABEL_RE = re.compile(r"^(?:final\s+)?(?:answer|response)\s*[:\-]\s*", re.IGNORECASE)
_REFUSAL_RE = re.compile(r"^i\s+(?:don'?t|do\s+not)\s+know(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)
_REFUSAL_FOLLOWERS = set("!.,;:?\"'`*)]\n“”’")


def _strip_decoration(text: str) -> str:
    text = text.strip(_DECORATION)
    label = _ANSWER_LABEL_RE.match(text)
    if label:
        text = text[label.end():].strip(_DECORATION)
    return text


def is_refusal(text: str) -> bool:
    """True iff `text` is the cascade refusal "I don't know!" (tolerant form; see module docstring)."""
    core = _strip_decoration(text.replace("’", "'").replace("‘", "'"))
    match = _REFUSAL_RE.match(core)
    if not match:
        return False
    rest = match.group("rest")
    if rest.startswith("\n"):
        return True
    rest = rest.lstrip(" \t")
    return rest == "" or rest[0] in _REFUSAL_FOLLOWERS


# Completions that can turn a prefix into a refusal: every suffix of every accepted spelling.
_REFUSAL_SPELLINGS = tuple(
    label + core
    for label in ("", "answer: ", "final answer: ", "response: ")
    for core in ("i don't know!", "i dont know!", "i do not know!")
)
_REFUSAL_COMPLETIONS = tuple(sorted({form[k:] for form in _REFUSAL_SPELLINGS for k in range(len(form) + 1)}))


def refusal_status(prefix: str) -> str:
    """What a partial response already tells about `is_refusal` of any continuation of it.

    "refusal": every continuation is a refusal (the phrase is complete and followed by punctuation);
    "answer": no continuation can be a refusal; "undecided": either can still happen. Lets a
    decoder stop a refused query after a few tokens with the same policy as `is_refusal`.
    """
    # The policy only looks at the first non-blank character after the phrase, so two probes suffice.
    if is_refusal(prefix + "x") and is_refusal(prefix + " x"):
        return "refusal"
    if any(is_refusal(prefix + completion) for completion in _REFUSAL_COMPLETIONS):
        return "undecided"
    return "answer"


# ----------------------------------------------------------------------------------------- numbers

# A number with optional sign, "$", thousands commas and decimals; not glued to a preceding word
# character (so "3-4" yields 3 and 4, not -4).
_NUMBER_RE = re.compile(r"(?<![\w.])(-)?\\?\$?(-)?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?![\d])")
_BOXED_RE = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_FRACTION_RE = re.compile(r"^\s*(-?)\s*(?:\\[dt]?frac\{(\d+)\}\{(\d+)\}|(\d+)\s*/\s*(\d+))\s*$")
_HASHES_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_NUMBER_RE = re.compile(
    r"answer\s*(?:is|:|=|would\s+be|will\s+be)?\s*[:=]?\s*(?:\*\*)?\s*(?:\\\(|\$\$)?\s*"
    r"(?:\\text\{\s*)?(?P<num>-?\s?\\?\$?\s?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?![\d])",
    re.IGNORECASE,
)


def canonical_number(value: float) -> str:
    """Canonical string of a number: integers without ".0", others with up to 6 decimals."""
    if math.isfinite(value) and value == round(value) and abs(value) < 1e15:
        return str(int(round(value)))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def parse_number(text: str) -> float | None:
    """Parse one number written the way answers write it ("$1,234.50", "42.", "-3", "25%").

    Returns None when `text` is not a single number.
    """
    cleaned = text.strip().replace("\\$", "").replace("$", "").replace(",", "").replace(" ", "")
    cleaned = cleaned.rstrip(".%").replace("\\%", "")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _numbers_in(text: str) -> list[str]:
    found = []
    for match in _NUMBER_RE.finditer(text):
        sign = "-" if (match.group(1) or match.group(2)) else ""
        found.append(sign + match.group(3).replace(",", ""))
    return found


def extract_number(text: str) -> str | None:
    """The final numeric answer in a free-form response, canonicalised, or None.

    Priority: last \\boxed{...}; last "#### N"; last "answer is N" / "Answer: N"; last number anywhere.
    """
    for pattern in (_BOXED_RE, _HASHES_RE):
        matches = pattern.findall(text)
        if matches:
            content = matches[-1].replace("\\!", "")
            fraction = _FRACTION_RE.match(content)
            if fraction:
                sign, *parts = fraction.groups()
                numerator, denominator = (float(p) for p in parts if p is not None)
                if denominator:
                    return canonical_number((-1.0 if sign else 1.0) * numerator / denominator)
            numbers = _numbers_in(content)
            if numbers:
                return canonical_number(float(numbers[0]))
    answer_matches = list(_ANSWER_NUMBER_RE.finditer(text))
    if answer_matches:
        value = parse_number(answer_matches[-1].group("num"))
        if value is not None:
            return canonical_number(value)
    numbers = _numbers_in(text)
    return canonical_number(float(numbers[-1])) if numbers else None


def numbers_equal(a: str, b: str, *, abs_tol: float = 1e-6) -> bool:
    """Numeric equality of two number strings, up to float noise (so 1450001 != 1450000)."""
    va, vb = parse_number(a), parse_number(b)
    return va is not None and vb is not None and math.isclose(va, vb, rel_tol=1e-12, abs_tol=abs_tol)


def check_number(response: str, gold: str) -> Verdict:
    if is_refusal(response):
        return Verdict(correct=False, refused=True, extracted=None)
    extracted = extract_number(response)
    correct = extracted is not None and numbers_equal(extracted, gold)
    return Verdict(correct=correct, refused=False, extracted=extracted, score=float(correct))


# ----------------------------------------------------------------------------------- choice letters

# A capital letter, optionally bracketed, standing alone ("B", "(B)", "[B]"); "I think ..." is not "I".
_L = r"[\(\[]?\s*(?P<letter>[A-Z])\s*[\)\]]?(?![\w'])(?!(?<=I)\s+(?:think|believe|guess|suppose|would|am)\b)"
# Tiers of evidence, strongest first; within a tier the last mention wins (models reason about
# wrong options before stating their final choice).
_CHOICE_TIERS = (
    (re.compile(r"\\boxed\s*\{\s*(?:\\text\{\s*)?(?P<letter>[A-Z])\b"),),
    (
        re.compile(
            # "answer is B", "Answer: B", "the answer to this question is (B)", "correct option - B"
            r"(?i:answer|(?:correct|right|best|final)\s+(?:option|choice))"
            r"(?:(?:\s+[\w']+){0,5}?\s+(?i:is|would\s+be|should\s+be|will\s+be)|\s*[=:\-])?"
            r"\s*:?\s*(?i:option|choice|letter)?\s*:?\s*\**\s*" + _L
        ),
        re.compile(r"(?i:i\s+(?:would\s+|will\s+|'ll\s+|'d\s+)?(?:choose|pick|select|go\s+with))\s*(?i:option|choice)?\s*\**\s*" + _L),
    ),
    (
        re.compile(
            r"(?<![\w])(?i:option\s+|choice\s+)?[\(\[]?(?P<letter>[A-Z])[\)\]]?\s+"
            r"(?i:is\s+(?:the\s+)?(?:(?:correct|right|best|true)(?:\s+(?:answer|option|choice))?|answer)\b)"
        ),
    ),
)
_BARE_LETTER_RE = re.compile(r"^[\(\[]?\s*(?P<letter>[A-Za-z])\s*[\)\]]?[.:]?$")
_LEADING_LETTER_RE = re.compile(r"^(?:[\(\[]\s*(?P<a>[A-Z])\s*[\)\]]|(?P<b>[A-Z])\s*[\).:]|(?P<c>[A-Z])\s+-\s|(?P<d>[A-Z])$)")
_PAREN_LETTER_RE = re.compile(r"\((?P<letter>[A-Z])\)")


def _clean_for_letters(text: str) -> str:
    return text.replace("**", "").replace("__", "").strip()


def _letter(match: re.Match) -> str:
    return next(g for g in match.groups() if g)


def _letter_by_option_text(text: str, options: Sequence[str]) -> str | None:
    """The option whose text the response gives, if exactly one option (not a sub-phrase of
    another mentioned option) is mentioned."""
    norm_response = normalize_answer(text)
    if not norm_response:
        return None
    norm_options = [normalize_answer(o) for o in options]
    for i, norm in enumerate(norm_options):
        if norm and norm == norm_response:
            return OPTION_LETTERS[i]
    padded = f" {norm_response} "
    hits = [i for i, norm in enumerate(norm_options) if norm and f" {norm} " in padded]
    hits = [i for i in hits if not any(j != i and norm_options[i] in norm_options[j] for j in hits)]
    return OPTION_LETTERS[hits[0]] if len(hits) == 1 else None


def extract_choice(text: str, options: Sequence[str]) -> str | None:
    """The option letter a response chooses, or None when it does not clearly choose one.

    A letter outside the question's options (e.g. "E" for four options) is still returned when it
    is stated explicitly, so the caller can score it wrong rather than unanswered.
    """
    valid = OPTION_LETTERS[: len(options)]
    text = _clean_for_letters(text)
    for tier in _CHOICE_TIERS:
        # Order by position across the tier's patterns, then prefer the last in-range letter; an
        # out-of-range one is returned only when nothing in range was stated.
        positioned = sorted((m.start(), m.group("letter")) for pattern in tier for m in pattern.finditer(text))
        letters = [letter for _, letter in positioned]
        if letters:
            in_range = [letter for letter in letters if letter in valid]
            return in_range[-1] if in_range else letters[-1]
    bare = _BARE_LETTER_RE.match(text.strip(" .\"'`"))
    # A lone capital is a choice even out of range; a lone lowercase letter only when in range
    # (an option's text may itself be a single letter, e.g. "s.").
    if bare and (bare.group("letter").isupper() or bare.group("letter").upper() in valid):
        return bare.group("letter").upper()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    leads = {_letter(m) for line in (lines[:1] + lines[-1:]) if (m := _LEADING_LETTER_RE.match(line))}
    leads &= set(valid)
    if len(leads) == 1:
        return leads.pop()
    by_text = _letter_by_option_text(text, options)
    if by_text:
        return by_text
    parens = [m.group("letter") for m in _PAREN_LETTER_RE.finditer(text) if m.group("letter") in valid]
    return parens[-1] if parens else None


def check_choice(response: str, options: Sequence[str], gold_letter: str) -> Verdict:
    if is_refusal(response):
        return Verdict(correct=False, refused=True, extracted=None)
    extracted = extract_choice(response, options)
    correct = extracted == gold_letter
    return Verdict(correct=correct, refused=False, extracted=extracted, score=float(correct))


# ------------------------------------------------------------------------------------------- spans

_PUNCTUATION = set(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_SPAN_ANSWER_RE = re.compile(r"(?:final\s+)?answer\s*(?:is\s*:?|:)\s*(?P<span>[^\n]+)", re.IGNORECASE)
_NUMERIC_TOKEN_RE = re.compile(r"^\$?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?$")


def normalize_answer(text: str, *, canonical_numbers: bool = False) -> str:
    """Official SQuAD normalisation: lowercase, drop punctuation, articles (a/an/the), extra spaces.

    canonical_numbers (DROP): split on hyphens too and write numeric tokens canonically before
    punctuation removal, so "1,000" == "1000", "3.0" == "3" and "3.5" stays "3.5".
    """
    text = text.lower()
    if canonical_numbers:
        tokens = []
        for token in text.replace("-", " ").split():
            stripped = token.strip(".,;:!?\"'()")
            if _NUMERIC_TOKEN_RE.match(stripped):
                tokens.append(canonical_number(parse_number(stripped)))
            else:
                tokens.append("".join(ch for ch in token if ch not in _PUNCTUATION))
        text = " ".join(tokens)
    else:
        text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str, *, canonical_numbers: bool = False) -> bool:
    return normalize_answer(prediction, canonical_numbers=canonical_numbers) == normalize_answer(
        gold, canonical_numbers=canonical_numbers
    )


def token_f1(prediction: str, gold: str, *, canonical_numbers: bool = False, match_numbers: bool = False) -> float:
    """SQuAD token F1 on normalised text. match_numbers (DROP): 0 when the gold contains numbers and
    the prediction contains none of them."""
    pred_tokens = normalize_answer(prediction, canonical_numbers=canonical_numbers).split()
    gold_tokens = normalize_answer(gold, canonical_numbers=canonical_numbers).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    if match_numbers:
        gold_numbers = {t for t in gold_tokens if parse_number(t) is not None}
        if gold_numbers and not gold_numbers & set(pred_tokens):
            return 0.0
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def extract_span(text: str) -> str:
    """The answer phrase of a free-form response: the text after the last "Answer:" / "answer is"
    on its line, else the whole reply if it is one line, else its last non-empty line."""
    matches = list(_SPAN_ANSWER_RE.finditer(text))
    if matches:
        span = matches[-1].group("span")
    else:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        span = lines[-1] if lines else ""
    span = span.strip(_DECORATION)
    return span.rstrip(".").strip(_DECORATION)


def check_span(
    response: str,
    golds: Sequence[str],
    *,
    f1_threshold: float,
    numbers: bool = False,
) -> Verdict:
    """Correct iff exact match or token F1 >= f1_threshold against any gold alternative.

    numbers=True applies the DROP rules (canonical numbers, gold number must appear)."""
    if not 0.0 < f1_threshold <= 1.0:
        raise ValueError(f"f1_threshold={f1_threshold} must be in (0, 1]")
    if is_refusal(response):
        return Verdict(correct=False, refused=True, extracted=None)
    span = extract_span(response)
    if not span:
        return Verdict(correct=False, refused=False, extracted=None)
    em = any(exact_match(span, g, canonical_numbers=numbers) for g in golds)
    f1 = max(token_f1(span, g, canonical_numbers=numbers, match_numbers=numbers) for g in golds)
    score = 1.0 if em else f1
    return Verdict(correct=em or f1 >= f1_threshold, refused=False, extracted=span, score=score)


def check_example(example: Example, response: str, *, f1_threshold: float = 0.5, numbers: bool = False) -> Verdict:
    """Dispatch on the example's answer type (tasks call this with their own span settings)."""
    if example.answer_type == "number":
        return check_number(response, example.gold)
    if example.answer_type == "choice":
        return check_choice(response, example.options, example.gold)
    return check_span(response, example.gold, f1_threshold=f1_threshold, numbers=numbers)
