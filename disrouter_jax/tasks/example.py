"""Row and verdict types shared by every task (benchmarks and the toy world alike)."""

from __future__ import annotations

import dataclasses
import string
from typing import Any, Literal, Mapping

AnswerType = Literal["number", "choice", "span"]
ANSWER_TYPES: tuple[str, ...] = ("number", "choice", "span")

# Option letters shown to the model. Options are always lettered A, B, C, ... by position, whatever
# labels the source file used ("1"-"4", "A"-"E"), and the gold letter is derived from the same position.
OPTION_LETTERS = string.ascii_uppercase


class BadRow(ValueError):
    """A source row that cannot become an Example (missing field, wrong option count, empty answer...).

    `reason` is a short category used to count skipped rows; `detail` names the field / value.
    Loaders catch this, count it and move on; it never stops a long run.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DataFileError(ValueError):
    """A whole source file that cannot be read in its format (not JSON, not the release layout):
    a wrong path or a damaged download rather than one bad row, so loading stops and names it."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One benchmark question, source-format independent.

    gold: for "number" a canonical number string ("2125", "-3", "0.5"); for "choice" the option
    letter ("A".."Z", position in `options`); for "span" a tuple of acceptable answers (any one
    counts; DROP multi-span answers are one alternative with spans joined by ", ").
    """

    task: str
    id: str
    question: str
    gold: str | tuple[str, ...]
    answer_type: AnswerType
    options: tuple[str, ...] | None = None
    passage: str | None = None

    def __post_init__(self):
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"Example {self.task}/{self.id}: answer_type={self.answer_type!r}, expected one of {ANSWER_TYPES}")
        if self.answer_type == "choice":
            if not self.options or len(self.options) > len(OPTION_LETTERS):
                raise ValueError(f"Example {self.task}/{self.id}: choice question needs 1..26 options, got {self.options!r}")
            if not isinstance(self.gold, str) or self.gold not in OPTION_LETTERS[: len(self.options)]:
                raise ValueError(f"Example {self.task}/{self.id}: gold={self.gold!r} is not a letter of its {len(self.options)} options")
        elif self.answer_type == "span":
            if not isinstance(self.gold, tuple) or not self.gold or not all(isinstance(g, str) and g.strip() for g in self.gold):
                raise ValueError(f"Example {self.task}/{self.id}: span gold must be a non-empty tuple of non-empty strings, got {self.gold!r}")
        elif not isinstance(self.gold, str) or not self.gold:
            raise ValueError(f"Example {self.task}/{self.id}: number gold must be a non-empty string, got {self.gold!r}")

    @property
    def letters(self) -> tuple[str, ...]:
        """Letters of the options, in order (empty for non-choice questions)."""
        return tuple(OPTION_LETTERS[: len(self.options or ())])

    @property
    def gold_index(self) -> int | None:
        """Position of the correct option for choice questions, else None."""
        return OPTION_LETTERS.index(self.gold) if self.answer_type == "choice" else None

    @property
    def key(self) -> str:
        """Identifier unique across tasks: "<task>/<id>"."""
        return f"{self.task}/{self.id}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); inverse of `from_dict`."""
        out = dataclasses.asdict(self)
        for name in ("gold", "options"):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> "Example":
        """Build from `to_dict` output; raises BadRow naming the missing or malformed field."""
        for name in ("task", "id", "question", "gold", "answer_type"):
            if name not in row or row[name] is None:
                raise BadRow("missing field", name)
        gold = row["gold"]
        if row["answer_type"] == "span":
            gold = (gold,) if isinstance(gold, str) else tuple(gold)
        options = row.get("options")
        try:
            return cls(
                task=str(row["task"]),
                id=str(row["id"]),
                question=str(row["question"]),
                gold=gold,
                answer_type=row["answer_type"],
                options=None if options is None else tuple(str(o) for o in options),
                passage=row.get("passage"),
            )
        except ValueError as err:
            raise BadRow("invalid example", str(err)) from err


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The checker's judgement of one response.

    refused: the response is the refusal (then correct is False and extracted is None).
    extracted: the answer read from the response (canonical number, option letter, or span text),
      None when nothing answer-like was found.
    score: 1.0/0.0 for number and choice; best token F1 against the gold alternatives for span.
    """

    correct: bool
    refused: bool
    extracted: str | None
    score: float = 0.0
