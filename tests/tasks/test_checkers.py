"""Answer-checker tables: realistic instruct-model responses and the verdict each must get."""

from __future__ import annotations

import pytest

from disrouter_jax.tasks import checkers
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.prompts import REFUSAL

# ------------------------------------------------------------------------------------------ refusal

REFUSALS = [
    REFUSAL,
    "I don't know!",
    "i don't know!",
    "I DON'T KNOW!",
    "I don't know",
    "I don't know.",
    "  I don't know!  \n",
    '"I don\'t know!"',
    "'I don't know!'",
    "“I don’t know!”",
    "I don’t know!",
    "I dont know!",
    "I do not know.",
    "**I don't know!**",
    "`I don't know!`",
    "Answer: I don't know!",
    "I don't know! The question is unclear.",
    "I don't know! I am not confident enough to answer this question.",
    "I don't know!\nThe passage does not say.",
    "I don't know, sorry.",
    "I don't know!!",
]
NOT_REFUSALS = [
    "",
    "B",
    "The answer is 42.",
    "I don't know the exact year, but it is 1990.",
    "I don't know how to be sure, but I think the answer is C.",
    "The answer is B. I don't know why option A is there.",
    "Honestly the question is ambiguous. Answer: B",
    "I don't knowingly lie: the answer is 3.",
    "I know! The answer is B.",
    "I don't think so. Answer: A",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusal_variants_are_recognised(text):
    assert checkers.is_refusal(text)


@pytest.mark.parametrize("text", NOT_REFUSALS)
def test_answers_mentioning_not_knowing_are_not_refusals(text):
    assert not checkers.is_refusal(text)


@pytest.mark.parametrize(
    "prefix,status",
    [
        ("", "undecided"),
        ("I", "undecided"),
        ("I do", "undecided"),
        ("I DON'T", "undecided"),
        ("I don’t kn", "undecided"),
        ("I don't know", "undecided"),  # "... the year" could still follow
        ("I don't know ", "undecided"),
        ("I don't know!", "refusal"),
        ("I don't know.", "refusal"),
        ("I don't know\n", "refusal"),
        ("**I don't know!**", "refusal"),
        ('"I', "undecided"),
        ("Ans", "undecided"),
        ("Answer: I do not know,", "refusal"),
        ("I don't know the", "answer"),
        ("I think", "answer"),
        ("The", "answer"),
        ("B", "answer"),
        ("A)", "answer"),
        ("42", "answer"),
    ],
)
def test_refusal_status_of_prefixes(prefix, status):
    assert checkers.refusal_status(prefix) == status


@pytest.mark.parametrize("full", [REFUSAL, "I don't know! Not sure.", "The answer is B.", "I don't know the answer."])
def test_refusal_status_agrees_with_is_refusal_along_a_response(full):
    final = checkers.is_refusal(full)
    for end in range(len(full) + 1):
        status = checkers.refusal_status(full[:end])
        assert status == "undecided" or (status == "refusal") == final, (full[:end], status)
    assert checkers.refusal_status(full) in ("refusal" if final else "answer", "undecided")


def _number_example(gold):
    return Example(task="t", id="1", question="q", gold=gold, answer_type="number")


def _choice_example(options, gold):
    return Example(task="t", id="1", question="q", options=tuple(options), gold=gold, answer_type="choice")


def _span_example(*golds):
    return Example(task="t", id="1", question="q", passage="p", gold=tuple(golds), answer_type="span")


@pytest.mark.parametrize("answer_type", ["number", "choice", "span"])
def test_refusal_is_never_scored_as_an_answer(answer_type):
    # A refusal whose trailing words contain the gold must still be a refusal, not a correct answer.
    example = {
        "number": _number_example("2"),
        "choice": _choice_example(["London", "Paris"], "A"),
        "span": _span_example("I don't know"),
    }[answer_type]
    for response in ("I don't know! Maybe 2? Maybe (A) London?", "I don't know"):
        verdict = checkers.check_example(example, response)
        assert verdict.refused and not verdict.correct and verdict.extracted is None


# ------------------------------------------------------------------------------------------ numbers

NUMBER_CASES = [
    # (response, gold, expected extracted)
    ("18", "18", "18"),
    ("The answer is 18.", "18", "18"),
    ("The answer is $18.", "18", "18"),
    ("The answer is: 18 dollars", "18", "18"),
    ("**Answer:** 42", "42", "42"),
    ("Answer: 1,450,000", "1450000", "1450000"),
    ("She makes $70,000 in profit.", "70000", "70000"),
    ("\\boxed{70000}", "70000", "70000"),
    ("So the total is \\(\\boxed{1,600}\\).", "1600", "1600"),
    ("The final answer is $\\boxed{18}$.", "18", "18"),
    ("#### 20", "20", "20"),
    ("The answer is -10.", "-10", "-10"),
    ("The average is (-48 + 21 + -3)/3 = -10 degrees. The answer is -10", "-10", "-10"),
    ("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18 every day.", "18", "18"),
    # numbers inside the reasoning after the stated answer do not win
    ("The answer is 18. Check: 18 / 2 = 9 eggs.", "18", "18"),
    ("The answer is 3.5", "3.5", "3.5"),
    ("0.5 of the cake is left, so the answer is \\boxed{\\frac{1}{2}}", "0.5", "0.5"),
    ("It costs 2.50 per pound.", "2.5", "2.5"),
    ("The answer is 25%.", "25", "25"),
    # wrong answers
    ("The answer is 17.", "18", "17"),
    ("16 - 3 - 4 = 9 eggs per day.", "18", "9"),
    ("The answer is 18 thousand", "18000", "18"),
    ("I think it is around twenty.", "20", None),
    ("Step 1: 3 * 4 = 12. Step 2: 12 + 5 = 17. The answer is 17.", "17", "17"),
]


@pytest.mark.parametrize("response,gold,extracted", NUMBER_CASES)
def test_number_checker_table(response, gold, extracted):
    verdict = checkers.check_number(response, gold)
    assert verdict.extracted == extracted
    assert verdict.correct == (extracted is not None and float(extracted) == float(gold))
    assert not verdict.refused


def test_number_equality_tolerates_formatting_not_value():
    assert checkers.numbers_equal("1,000", "1000")
    assert checkers.numbers_equal("$5.00", "5")
    assert not checkers.numbers_equal("5.01", "5")
    assert not checkers.numbers_equal("1450001", "1450000")  # large answers compare exactly
    assert checkers.numbers_equal("0.1", str(0.3 - 0.2))
    assert checkers.canonical_number(3.0) == "3" and checkers.canonical_number(-0.25) == "-0.25"
    assert checkers.parse_number("not a number") is None


# ------------------------------------------------------------------------------- multiple choice

CAPITALS = ["London", "Paris", "Berlin", "Rome"]
CHOICE_CASES = [
    # (response, expected letter); gold is "B" (Paris)
    ("B", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    ("[B]", "B"),
    ("**B**", "B"),
    ("Answer: B", "B"),
    ("Answer: (B)", "B"),
    ("answer: B", "B"),
    ("**Answer:** B", "B"),
    ("The answer is B.", "B"),
    ("The correct answer is (B) Paris.", "B"),
    ("The correct option is B", "B"),
    ("Final answer: B", "B"),
    ("B) Paris", "B"),
    ("B. Paris", "B"),
    ("(B) Paris", "B"),
    ("B: Paris", "B"),
    ("Paris", "B"),
    ("paris.", "B"),
    ("The capital of France is Paris.", "B"),
    ("I choose B.", "B"),
    ("I would go with option B", "B"),
    ("Option B is correct.", "B"),
    ("\\boxed{B}", "B"),
    ("The answer to this question is B.", "B"),
    ("So my final answer would be: (B)", "B"),
    ("B is the answer.", "B"),
    ("Answer: B would be my pick", "B"),
    ("London is in England and Berlin is in Germany, so it must be\nB", "B"),
    # wrong letters mentioned before the final choice
    ("A is wrong because London is in England. C is Berlin, also wrong. The answer is B.", "B"),
    ("(A) London - no. (C) Berlin - no. (D) Rome - no. So the answer is (B).", "B"),
    ("Let's check each option.\nA) London: no\nC) Berlin: no\nTherefore, the answer is B", "B"),
    ("Not A, not C, not D. Answer: B", "B"),
    # statements after the answer mention other options; the explicit answer still wins
    ("The answer is B. Option A is London, which is the capital of the UK.", "B"),
    # wrong or unclear answers
    ("Answer: A", "A"),
    ("The answer is C) Berlin", "C"),
    ("Berlin", "C"),
    ("Answer: E", "E"),  # explicitly out of range: extracted, scored wrong
    ("A) London\nB) Paris\nC) Berlin", None),  # just repeats the options
    ("London or Paris, hard to say.", None),
    ("It depends on the year.", None),
    ("", None),
]


@pytest.mark.parametrize("response,letter", CHOICE_CASES)
def test_choice_checker_table(response, letter):
    verdict = checkers.check_choice(response, CAPITALS, "B")
    assert verdict.extracted == letter
    assert verdict.correct == (letter == "B")


def test_choice_option_text_prefers_the_longer_option_containing_a_shorter_one():
    options = ["True, True", "False, False", "True, False", "False, True"]
    assert checkers.extract_choice("True, False", options) == "C"
    assert checkers.extract_choice("The statements are: True, True.", options) == "A"


def test_choice_letters_follow_the_number_of_options():
    three = ["gas", "liquid", "solid"]
    assert checkers.extract_choice("D", three) == "D"  # explicit bare letter, wrong
    assert not checkers.check_choice("D", three, "C").correct
    assert checkers.extract_choice("(D) is not an option; (C)", three) == "C"


def test_pronoun_i_is_not_read_as_option_i():
    nine = [f"option {i}" for i in range(9)]
    assert checkers.extract_choice("The answer is I think B", nine) is None
    assert checkers.extract_choice("The answer is I", nine) == "I"


# -------------------------------------------------------------------------------------------- spans


def test_squad_normalisation_is_the_official_one():
    assert checkers.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert checkers.normalize_answer("an apple, a pear") == "apple pear"
    assert checkers.normalize_answer("Levi's Stadium.") == "levis stadium"
    # numbers are plain text in SQuAD normalisation: punctuation inside them is removed
    assert checkers.normalize_answer("3.5") == "35"
    assert checkers.normalize_answer("3.5", canonical_numbers=True) == "3.5"
    assert checkers.normalize_answer("1,000 yards", canonical_numbers=True) == "1000 yards"
    assert checkers.normalize_answer("80-yard", canonical_numbers=True) == "80 yard"


def test_token_f1_values():
    assert checkers.token_f1("Denver Broncos", "Denver Broncos") == 1.0
    assert checkers.token_f1("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    assert checkers.token_f1("the Carolina Panthers team", "Carolina Panthers") == pytest.approx(0.8)
    assert checkers.token_f1("Paris", "London") == 0.0
    # DROP number rule: a wrong number scores 0 even with other tokens shared
    assert checkers.token_f1("28 yards", "29 yards", canonical_numbers=True, match_numbers=True) == 0.0
    assert checkers.token_f1("28 yards", "29 yards") == pytest.approx(0.5)


SQUAD_GOLDS = ("Santa Clara, California", "Levi's Stadium", "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California.")
SPAN_CASES = [
    # (response, correct at threshold 0.5, extracted)
    ("Santa Clara, California", True, "Santa Clara, California"),
    ("Answer: Levi's Stadium", True, "Levi's Stadium"),
    ("The answer is Levi's Stadium.", True, "Levi's Stadium"),
    ("answer: levis stadium", True, "levis stadium"),
    ("Super Bowl 50 was played at Levi's Stadium.\nAnswer: Levi's Stadium in Santa Clara", True, "Levi's Stadium in Santa Clara"),
    ("California", True, "California"),  # F1 = 0.5 against "Santa Clara, California"
    ("Answer: San Francisco", False, "San Francisco"),  # F1 = 1/3 against the long gold only
    ("Answer: Texas", False, "Texas"),
    ("It was held in a stadium.\nMiami, Florida", False, "Miami, Florida"),
]


@pytest.mark.parametrize("response,correct,extracted", SPAN_CASES)
def test_span_checker_table(response, correct, extracted):
    verdict = checkers.check_span(response, SQUAD_GOLDS, f1_threshold=0.5)
    assert verdict.extracted == extracted
    best_f1 = max(checkers.token_f1(extracted, g) for g in SQUAD_GOLDS)
    assert verdict.correct == correct == (best_f1 >= 0.5 or any(checkers.exact_match(extracted, g) for g in SQUAD_GOLDS))


def test_span_threshold_is_configurable():
    assert checkers.check_span("California", SQUAD_GOLDS, f1_threshold=0.5).correct
    assert not checkers.check_span("California", SQUAD_GOLDS, f1_threshold=0.8).correct
    assert checkers.check_span("Santa Clara California", SQUAD_GOLDS, f1_threshold=1.0).correct  # exact after normalisation
    with pytest.raises(ValueError, match="f1_threshold"):
        checkers.check_span("x", SQUAD_GOLDS, f1_threshold=0.0)


DROP_CASES = [
    # (response, golds, correct)
    ("Answer: 29", ("29",), True),
    ("Answer: 29 yards", ("29",), True),
    ("The difference is 53 - 24 = 29 yards.\nAnswer: 29.0", ("29",), True),
    ("Answer: 28", ("29",), False),
    ("Answer: 28 yards", ("29 yards",), False),
    ("Answer: 1,000", ("1000",), True),
    ("Answer: Chaz Schilens", ("Chaz Schilens", "JaMarcus Russell"), True),
    ("Answer: JaMarcus Russell", ("Chaz Schilens", "JaMarcus Russell"), True),
    ("Answer: Raiders", ("Raiders", "the Raiders"), True),
    ("Answer: Houston Texans", ("Raiders",), False),
    ("Answer: 80", ("80-yard", "80-yard punt return", "80"), True),
    ("Answer: 12 March 1998", ("12 March 1998",), True),
]


@pytest.mark.parametrize("response,golds,correct", DROP_CASES)
def test_drop_checker_table(response, golds, correct):
    assert checkers.check_span(response, golds, f1_threshold=0.5, numbers=True).correct == correct


def test_extract_span_picks_the_last_answer_line():
    assert checkers.extract_span("Answer: first\nOn reflection...\nAnswer: second.") == "second"
    assert checkers.extract_span("  Denver Broncos  ") == "Denver Broncos"
    assert checkers.extract_span("Some reasoning.\n\n**Carolina Panthers**") == "Carolina Panthers"
