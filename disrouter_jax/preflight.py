"""Every input of a run, checked before any weight reaches a device.

Per agent: the checkpoint (config.json parses as a supported family; the safetensors headers hold
exactly its tensors, in its shapes; no tensor is read) and the tokenizer (a chat template that
renders, and does not drop the system message the scenario comes in; an end-of-turn token; the
refusal encoded losslessly). Per data set and role: the split's files exist and their rows parse.
A failure is a ``Problem`` naming what and where; ``plan.py`` prints them all, the CLIs stop at them.

A Hub id is checked through its config.json and tokenizer files only (fetched when the machine is
online, never the weights); offline, a known release's shapes (``models/releases.py``) still size
the plan, and the id itself is a problem: the run could not load it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from disrouter_jax import storage
from disrouter_jax import task_data
from disrouter_jax.agents import AgentSpec, check_chat_tokenizer, load_tokenizer
from disrouter_jax.errors import SetupError, one_line, user_errors
from disrouter_jax.generation import chat_prompt_ids, stop_token_ids_for
from disrouter_jax.models import families, hf_io, releases
from disrouter_jax.models.config import ModelConfig
from disrouter_jax.tasks.prompts import REFUSAL, build_messages
from disrouter_jax.tasks.registry import get_task

logger = logging.getLogger(__name__)

# What the plan fetches of a Hub checkpoint: everything but the weights.
HUB_METADATA = ["config.json", "generation_config.json", "tokenizer*", "vocab.json", "merges.txt", "*.jinja"]


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str  # "checkpoint", "tokenizer", "dataset", "memory" or "config"
    where: str  # the agent, data set or config field
    message: str

    def __str__(self) -> str:
        return f"{self.kind} {self.where}: {self.message}"


@dataclasses.dataclass(frozen=True)
class AgentCheck:
    spec: AgentSpec
    model_config: ModelConfig | None  # None: no shapes known (the plan cannot size this agent)
    shapes_from: str  # "checkpoint", "Hub config.json" or "released config.json (built in)"
    problems: tuple[Problem, ...]


@dataclasses.dataclass(frozen=True)
class TaskCheck:
    name: str
    role: str  # "train" or "eval"
    split: str | None
    source: str  # the folder read, or "Hub (not checked)"
    rows: int | None  # rows that parse; None: not known (Hub)
    skipped: dict[str, int]
    problems: tuple[Problem, ...]


def check_agent(spec: AgentSpec) -> AgentCheck:
    """The checkpoint and tokenizer of one agent (see the module docstring)."""
    where = spec.name
    local = hf_io.resolve_checkpoint_dir(spec.path) if storage.is_url(spec.path) else Path(spec.path).expanduser()
    if local.is_dir():
        try:
            config = hf_io.check_checkpoint(local)
        except user_errors() as err:
            return AgentCheck(spec, _config_only(local), "checkpoint", (Problem("checkpoint", where, one_line(err)),))
        return AgentCheck(spec, config, "checkpoint", tuple(check_tokenizer(local, where)))
    if not hf_io.looks_like_hub_id(spec.path):
        return AgentCheck(spec, None, "", (Problem("checkpoint", where, f"{spec.path}: no such directory"),))
    try:
        from huggingface_hub import snapshot_download

        meta = Path(snapshot_download(spec.path, allow_patterns=HUB_METADATA))
        config = families.config_from_json(meta / "config.json")
    except Exception as err:  # offline, unknown or gated repo: what the run would meet too
        reason = _short(one_line(err).split(". ")[0])
        problem = Problem("checkpoint", where, (
            f"{spec.path} is not a local directory and its config.json could not be fetched from the Hugging Face "
            f"Hub ({type(err).__name__}: {reason}); download it (huggingface-cli download {spec.path} "
            "--local-dir DIR) and point config.pool.agents at DIR"))
        released = releases.released_config(spec.path)
        return AgentCheck(spec, released, "released config.json (built in)" if released else "", (problem,))
    return AgentCheck(spec, config, "Hub config.json", tuple(check_tokenizer(meta, where)))


def _short(text: str, limit: int = 100) -> str:
    """A library's message cut at a word boundary (Hub errors run to several sentences)."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _config_only(ckpt_dir: Path) -> ModelConfig | None:
    """The shapes of a checkpoint whose weights failed the check (to size it anyway), if it has them."""
    try:
        return families.config_from_json(ckpt_dir / "config.json")
    except user_errors():
        return None


def check_tokenizer(ckpt_dir: Path, where: str) -> list[Problem]:
    """What every stage asks of an agent's tokenizer, on the directory's tokenizer files."""
    try:
        tokenizer = load_tokenizer(ckpt_dir)
    except Exception as err:  # transformers raises many kinds for a missing or broken tokenizer
        return [Problem("tokenizer", where,
                        f"{ckpt_dir}: no usable tokenizer ({type(err).__name__}: {_short(one_line(err))})")]
    try:
        check_chat_tokenizer(tokenizer, ckpt_dir)
        stop_token_ids_for(tokenizer, ckpt_dir)
        scenario, plain = [chat_prompt_ids(tokenizer, build_messages("What is 2 + 2?", alpha=alpha,
                                                                      task_format_instruction=""))
                           for alpha in (0.5, None)]
    except (SetupError, ValueError, TypeError) as err:  # no template, no stop token, bad messages
        return [Problem("tokenizer", where, one_line(err))]
    except Exception as err:  # a template that does not render (jinja errors)
        return [Problem("tokenizer", where, f"{ckpt_dir}: the chat template does not render "
                                           f"({type(err).__name__}: {_short(one_line(err))})")]
    problems = []
    if scenario == plain:  # the scenario (α) reaches an agent only as a system message
        problems.append(Problem("tokenizer", where, f"{ckpt_dir}: the chat template ignores the system message "
                                                    "that carries the scenario instruction"))
    if tokenizer.decode(tokenizer.encode(REFUSAL, add_special_tokens=False)) != REFUSAL:
        problems.append(Problem("tokenizer", where, f"{ckpt_dir}: does not encode the refusal {REFUSAL!r} losslessly"))
    return problems


def check_task(config, name: str, workdir: str | Path, role: str) -> TaskCheck:
    """One data set's split for ``role``: its files and how many rows parse."""
    where = f"{name} ({role})"
    try:
        split = task_data.split_for(config, name, workdir, role)
        path = task_data.task_path(config, name, workdir)
        if path is None:
            return TaskCheck(name, role, split, "Hub (not checked)", None, {}, ())
        result = get_task(name).read_local(path, split)
    except user_errors() as err:
        return TaskCheck(name, role, None, "", None, {}, (Problem("dataset", where, one_line(err)),))
    problems = []
    if not result.examples:
        problems.append(Problem("dataset", where, f"no row of split {split!r} in {path} parses "
                                                  f"(skipped: {dict(result.skipped)})"))
    evaluated = name in set(config.data.eval_tasks) | set(config.data.out_of_domain)
    if role == "train" and evaluated:
        try:  # training on its evaluation split needs evaluated rows to hold out
            if task_data.trains_on_eval_rows(config, name, workdir):
                task_data.rows_held_out(config)
        except user_errors() as err:
            problems.append(Problem("dataset", where, one_line(err)))
    return TaskCheck(name, role, split, str(path), len(result.examples), dict(result.skipped), tuple(problems))


def check_tasks(config, workdir: str | Path) -> list[TaskCheck]:
    checks = [check_task(config, name, workdir, "train") for name in config.data.train_tasks]
    evaluated = dict.fromkeys(list(config.data.eval_tasks) + list(config.data.out_of_domain))
    return checks + [check_task(config, name, workdir, "eval") for name in evaluated]
