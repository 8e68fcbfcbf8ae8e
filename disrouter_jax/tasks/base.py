"""The Task definition: how one dataset is loaded, turned into prompts and checked.

A Task is a frozen dataclass of plain functions and settings, so the toy world (or a user) can
register new tasks without subclassing: give it a file reader, a record parser and an answer type.

Loading never stops on a bad row: parsers raise BadRow, the loader counts the reason, logs one
summary line per load (with the first offending row) and skips it. Option letters are always
derived from the position of each option in the row as loaded, and the gold letter from the same
position, so a skipped or malformed row can never shift another row's letters.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from disrouter_jax.tasks import checkers, prompts, readers
from disrouter_jax.tasks.example import OPTION_LETTERS, AnswerType, BadRow, Example, Verdict

logger = logging.getLogger(__name__)

Domain = Literal["in", "out"]
FileReader = Callable[[Path], Iterable[tuple[str, Any]]]
RecordParser = Callable[[Any, str, str], Example]  # (record, where, task name) -> Example
HubParser = Callable[[Mapping[str, Any], int, str], Example]  # (row, index, task name) -> Example


@dataclasses.dataclass(frozen=True)
class LoadResult:
    examples: list[Example]
    skipped: collections.Counter  # reason -> count
    sources: tuple[str, ...]  # files (or hub ids) read

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclasses.dataclass(frozen=True, eq=False)  # identity equality/hash: tasks are registry entries
class Task:
    """One dataset. See the module docstring; the fields below are all a new task needs.

    read_file: one local source file -> (where, raw record | BadRow) pairs, one per question.
    parse_record: raw record -> Example (raise BadRow for a bad row).
    parse_hub_row: a Hugging Face Hub row (documented schema of `hf_id`) -> Example.
    split_patterns: split -> glob patterns, relative to a local directory, of that split's files
      (the original release layout; sample files with a suffix match too).
    """

    name: str
    domain: Domain
    answer_type: AnswerType
    read_file: FileReader
    parse_record: RecordParser
    parse_hub_row: HubParser | None = None
    split_patterns: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    default_split: str = "test"
    hf_id: str | None = None
    hf_configs: tuple[str | None, ...] = (None,)
    format_instruction: str | None = None  # None: prompts.FORMAT_INSTRUCTIONS[answer_type]
    f1_threshold: float = 0.5  # span tasks: correct iff exact match or token F1 >= this
    span_numbers: bool = False  # span tasks: DROP number rules (canonical numbers, gold number must appear)

    def __post_init__(self):
        if self.domain not in ("in", "out"):
            raise ValueError(f"Task {self.name}: domain={self.domain!r}, expected 'in' or 'out'")
        if self.answer_type not in ("number", "choice", "span"):
            raise ValueError(f"Task {self.name}: answer_type={self.answer_type!r}")
        if not 0.0 < self.f1_threshold <= 1.0:
            raise ValueError(f"Task {self.name}: f1_threshold={self.f1_threshold} must be in (0, 1]")

    # ------------------------------------------------------------------------------- loading

    def local_files(self, path: str | Path, split: str | None = None) -> list[Path]:
        """The files to read: `path` itself if it is a file, else the split's files under it."""
        path = Path(path)
        if path.is_file():
            return [path]
        if not path.is_dir():
            raise FileNotFoundError(f"{self.name}: no such file or directory: {path}")
        split = split or self.default_split
        patterns = tuple(self.split_patterns.get(split, ())) + self._parquet_patterns(split)
        files = sorted({f for pattern in patterns for f in path.glob(pattern) if f.is_file()})
        if not files:
            known = ", ".join(sorted(self.split_patterns)) or "none"
            raise FileNotFoundError(
                f"{self.name}: no files for split {split!r} under {path} (tried {', '.join(patterns)}; "
                f"local splits: {known})"
            )
        return files

    def _parquet_patterns(self, split: str) -> tuple[str, ...]:
        """Where a Hub snapshot keeps a split: "<config>/<split>-*.parquet" (or "data/..." without one)."""
        configs = [c for c in self.hf_configs if c is not None]
        if configs:
            return tuple(f"{c}/{split}-*.parquet" for c in configs)
        return (f"{split}-*.parquet", f"data/{split}-*.parquet")

    def read_local(self, path: str | Path, split: str | None = None) -> LoadResult:
        """Examples from original-release files (or Hub parquet files), with skip counts."""
        files = self.local_files(path, split)
        release = [f for f in files if f.suffix != ".parquet"]
        parquet = [f for f in files if f.suffix == ".parquet"]
        release_stream = ((w, r, self.parse_record) for f in release for w, r in self.read_file(f))
        # Hub rows are numbered across all shards, as `datasets` would number the split.
        hub_rows = (item for f in parquet for item in readers.read_parquet(f))
        hub_stream = ((w, (i, row), self._parse_hub_indexed) for i, (w, row) in enumerate(hub_rows))
        return self._collect(itertools.chain(release_stream, hub_stream), tuple(map(str, files)))

    def load_local(self, path: str | Path, split: str | None = None) -> list[Example]:
        return self.read_local(path, split).examples

    def from_hf_row(self, row: Mapping[str, Any], index: int = 0) -> Example:
        """One Hub row -> Example; raises BadRow for a bad row."""
        if self.parse_hub_row is None:
            raise NotImplementedError(f"{self.name}: no Hugging Face Hub schema")
        return self.parse_hub_row(row, index, self.name)

    def read_hf_rows(self, rows: Iterable[Mapping[str, Any]], source: str = "rows") -> LoadResult:
        """Examples from an iterable of Hub-schema rows (e.g. a `datasets.Dataset`)."""
        stream = ((f"{source}:{i}", (i, row), self._parse_hub_indexed) for i, row in enumerate(rows))
        return self._collect(stream, (source,))

    def load_hf(self, split: str | None = None, **load_dataset_kwargs: Any) -> list[Example]:
        """Download with `datasets.load_dataset(hf_id, config, split=...)` (needs the network or a cache)."""
        if self.hf_id is None:
            raise ValueError(f"{self.name}: no Hugging Face dataset id")
        import datasets  # heavy; only needed online

        split = split or self.default_split
        rows = []
        for config in self.hf_configs:
            rows.extend(datasets.load_dataset(self.hf_id, config, split=split, **load_dataset_kwargs))
        return self.read_hf_rows(rows, source=f"{self.hf_id}:{split}").examples

    def _parse_hub_indexed(self, item: tuple[int, Mapping[str, Any]], where: str, task: str) -> Example:
        return self.from_hf_row(item[1], item[0])

    def _collect(self, stream: Iterable[tuple[str, Any, Callable]], sources: tuple[str, ...]) -> LoadResult:
        examples: list[Example] = []
        skipped: collections.Counter = collections.Counter()
        seen_ids: set[str] = set()
        first_bad = None
        for where, record, parse in stream:
            try:
                if isinstance(record, BadRow):
                    raise record
                example = parse(record, where, self.name)
                if example.id in seen_ids:
                    raise BadRow("duplicate id", f"{where}: {example.id!r}")
            except BadRow as bad:
                skipped[bad.reason] += 1
                if first_bad is None:
                    first_bad = str(bad) if where in str(bad) else f"{where}: {bad}"
                continue
            seen_ids.add(example.id)
            examples.append(example)
        if skipped:
            logger.warning(
                "%s: skipped %d bad rows (%s) of %d from %s; first: %s",
                self.name, sum(skipped.values()), dict(skipped), len(examples) + sum(skipped.values()),
                ", ".join(sources), first_bad,
            )
        logger.info("%s: loaded %d examples from %s", self.name, len(examples), ", ".join(sources))
        return LoadResult(examples=examples, skipped=skipped, sources=sources)

    # ----------------------------------------------------------------------------- prompting

    @property
    def instruction(self) -> str:
        """The answer-format instruction for this task's questions."""
        if self.format_instruction is not None:
            return self.format_instruction
        return prompts.FORMAT_INSTRUCTIONS[self.answer_type]

    def question_text(self, example: Example) -> str:
        return question_text(example)

    def messages(self, example: Example, alpha: float | None) -> list[dict[str, str]]:
        return prompts.build_messages(self.question_text(example), alpha=alpha, task_format_instruction=self.instruction)

    def prompt(self, tokenizer: Any, example: Example, alpha: float | None) -> str:
        return prompts.render_prompt(tokenizer, self.messages(example, alpha))

    # ------------------------------------------------------------------------------ checking

    def check(self, example: Example, response: str, *, f1_threshold: float | None = None) -> Verdict:
        """Score one response to `example` (refusal first, then the answer type's checker)."""
        if example.answer_type != self.answer_type:
            raise ValueError(f"{self.name}: example {example.key} has answer_type {example.answer_type!r}")
        threshold = self.f1_threshold if f1_threshold is None else f1_threshold
        return checkers.check_example(example, response, f1_threshold=threshold, numbers=self.span_numbers)


def question_text(example: Example) -> str:
    """Passage (if any), question, and lettered options (if any), as shown to the model."""
    parts = []
    if example.passage:
        parts.append(f"Passage:\n{example.passage}")
    parts.append(f"Question: {example.question}")
    if example.options:
        parts.append("Options:\n" + "\n".join(f"{l}. {o}" for l, o in zip(example.letters, example.options)))
    return "\n\n".join(parts)


# ------------------------------------------------------------------------- shared row builders


def choice_example(
    *,
    task: str,
    id: str,
    question: str,
    options: Sequence[Any],
    gold_index: int,
    where: str,
    passage: str | None = None,
    num_options: tuple[int, int] = (2, 26),
) -> Example:
    """A validated multiple-choice Example; BadRow for a wrong option count, an empty option or
    a gold index outside the options."""
    lo, hi = num_options
    if not isinstance(options, (list, tuple)) or not lo <= len(options) <= hi:
        count = len(options) if isinstance(options, (list, tuple)) else type(options).__name__
        raise BadRow("wrong option count", f"{where}: {count} options, expected {lo}..{hi}")
    cleaned = []
    for i, option in enumerate(options):
        if isinstance(option, (int, float)) and not isinstance(option, bool):
            option = str(option)
        if not isinstance(option, str) or not readers.clean_text(option):
            raise BadRow("empty option", f"{where}: option {i} is {option!r}")
        cleaned.append(readers.clean_text(option))
    if isinstance(gold_index, bool) or not isinstance(gold_index, int) or not 0 <= gold_index < len(cleaned):
        raise BadRow("gold not among options", f"{where}: gold index {gold_index!r} for {len(cleaned)} options")
    return Example(
        task=task, id=id, question=question, options=tuple(cleaned), passage=passage,
        gold=OPTION_LETTERS[gold_index], answer_type="choice",
    )


def index_of_label(labels: Sequence[Any], answer_key: Any, where: str) -> int:
    """Position of `answer_key` among the row's own option labels.

    Labels must be the first n capital letters or the first n digits from 1 (the ARC/OBQA
    conventions); anything else is a BadRow rather than a guess.
    """
    labels = [str(label).strip() for label in labels]
    n = len(labels)
    if labels != list(OPTION_LETTERS[:n]) and labels != [str(i) for i in range(1, n + 1)]:
        raise BadRow("unexpected option labels", f"{where}: {labels}")
    key = str(answer_key).strip()
    if key not in labels:
        raise BadRow("gold not among options", f"{where}: answer {key!r} not in labels {labels}")
    return labels.index(key)
