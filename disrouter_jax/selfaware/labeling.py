"""Stage 1 of Self-Awareness Training: how often does the agent itself get each query right?

For every training query the agent samples N answers to the plain prompt (no scenario: p(x) is a
property of agent and query, the scenario only moves the threshold later). The task checker
scores each; p(x) = k / N, and one correct answer is kept as the SFT target.

Work is cut into chunks written atomically (``labels.partNNNNN.jsonl``), so an interrupted run
resumes at the first missing chunk; the finished set is merged into ``labels.jsonl``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from collections.abc import Sequence

from disrouter_jax import storage
from disrouter_jax.agents import Agent
from disrouter_jax.generation import generate
from disrouter_jax.selfaware.data import LabelRecord, read_labels_jsonl, write_labels_jsonl
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.registry import get_task

logger = logging.getLogger(__name__)
LABELS_FILE = "labels.jsonl"


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    num_samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    batch_size: int = 32
    chunk_size: int = 512
    seed: int = 0

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"label.num_samples={self.num_samples}: need at least one sample")
        if self.temperature <= 0:
            raise ValueError(f"label.temperature={self.temperature}: labelling needs sampling (> 0)")
        if self.chunk_size < 1:
            raise ValueError(f"label.chunk_size={self.chunk_size}: need at least one query per chunk")


def label_examples(agent: Agent, examples: Sequence[Example], cfg: LabelConfig, *,
                   seed_offset: int = 0, progress: bool | None = None) -> list[LabelRecord]:
    """Samples ``cfg.num_samples`` answers per example and records the correctness frequency."""
    prompts = [agent.prompt_ids(example, alpha=None) for example in examples]
    generations = generate(
        agent.model,
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        num_samples=cfg.num_samples,
        stop_token_ids=agent.stop_token_ids,
        seed=cfg.seed + seed_offset,
        mesh=agent.mesh,
        max_batch_size=cfg.batch_size * cfg.num_samples,
        progress=progress,
    )
    records = []
    for example, samples in zip(examples, generations):
        task = get_task(example.task)
        responses = [agent.decode(g.tokens) for g in samples]
        verdicts = [task.check(example, r) for r in responses]
        num_correct = sum(v.correct for v in verdicts)
        kept = next((r for r, v in zip(responses, verdicts) if v.correct), None)
        records.append(
            LabelRecord(
                agent=agent.name,
                task=example.task,
                query_id=example.id,
                p_correct=num_correct / len(samples),
                num_samples=len(samples),
                correct_response=kept,
                prompt_question=task.question_text(example),
                gold=example.gold,
                meta={"refusals": sum(v.refused for v in verdicts)},
            )
        )
    return records


def run_labelling(agent: Agent, examples: Sequence[Example], out_dir: str | Path, cfg: LabelConfig,
                  *, progress: bool | None = None) -> list[LabelRecord]:
    """Labels ``examples`` under ``out_dir``, reusing finished chunks; returns all records."""
    out_dir = storage.path(out_dir)
    final = out_dir / LABELS_FILE
    # Every process labels every query (generation is collective on a multi-process mesh); only
    # process 0 writes. The barriers keep another process from reading a chunk file that
    # process 0 is about to delete, or missing one it has not written yet.
    storage.barrier(f"labels:{out_dir}:start")
    if final.is_file():
        records = read_labels_jsonl(final)
        if len(records) == len(examples):
            logger.info("%s: reusing %d labels from %s", agent.name, len(records), final)
            return records
        raise ValueError(
            f"{final}: holds {len(records)} labels but this run has {len(examples)} training "
            "queries; use a fresh --workdir or delete the file"
        )
    records: list[LabelRecord] = []
    reused = 0
    for start in range(0, len(examples), cfg.chunk_size):
        part = out_dir / f"labels.part{start // cfg.chunk_size:05d}.jsonl"
        chunk = examples[start : start + cfg.chunk_size]
        if part.is_file():
            done = read_labels_jsonl(part)
            if [r.query_id for r in done] == [e.id for e in chunk]:
                records.extend(done)
                reused += 1
                continue
            raise ValueError(f"{part}: labels for other queries than this chunk; delete it to relabel")
        # The chunk index offsets the seed so a resumed run samples exactly what it would have.
        chunk_records = label_examples(agent, chunk, cfg, seed_offset=start, progress=progress)
        if storage.is_writer():
            write_labels_jsonl(part, chunk_records)
        records.extend(chunk_records)
    if reused:
        logger.info("%s: labelling resumed, %d of %d chunks reused from %s", agent.name, reused,
                    -(-len(examples) // cfg.chunk_size), out_dir)
    if storage.is_writer():
        write_labels_jsonl(final, records)
        for part in out_dir.glob("labels.part*.jsonl"):
            part.unlink()
    storage.barrier(f"labels:{out_dir}:written")
    return records
