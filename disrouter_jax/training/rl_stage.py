"""Stage 3: scenario-conditioned policy gradient.

Each step draws ``prompts_per_step`` training queries and an α per prompt (written into the
prompt), samples ``group_size`` responses per prompt with the current policy, rewards them
(+1 correct, 0 wrong, (1 − α)^γ for the refusal), turns group rewards into advantages and takes
one clipped policy-gradient update. Prompts, α and sampling seeds are functions of the step index,
so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from disrouter_jax.agents import Agent
from disrouter_jax.generation import generate
from disrouter_jax.selfaware import rewards
from disrouter_jax.selfaware.data import alpha_schedule
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.registry import get_task
from disrouter_jax.training.lora import merge_lora
from disrouter_jax.training.rl import rl_batch_from_rollouts
from disrouter_jax.training.sft import sequence_logprobs


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int
    group_size: int
    alphas: tuple[float, ...]
    gamma: float
    temperature: float
    max_new_tokens: int
    normalize_advantages: bool
    length_buckets: tuple[int, ...]
    seed: int


def rollout_metrics(alphas_p, correct_pg, refused_pg, rewards_pg) -> dict[str, float]:
    """Reward, accuracy and refusal rate overall and per scenario α."""
    out = {
        "reward_mean": float(rewards_pg.mean()),
        "refusal_rate": float(refused_pg.mean()),
        "accuracy": float(correct_pg.mean()),
    }
    answered = ~refused_pg
    out["answer_accuracy"] = float(correct_pg[answered].mean()) if answered.any() else 0.0
    for alpha in sorted(set(alphas_p.tolist())):
        rows = alphas_p == alpha
        out[f"refusal_rate/alpha_{alpha:g}"] = float(refused_pg[rows].mean())
        out[f"reward_mean/alpha_{alpha:g}"] = float(rewards_pg[rows].mean())
    return out


def rl_batch_fn(agent: Agent, examples: Sequence[Example], cfg: RolloutConfig, *,
                pad_id: int, reference_model=None):
    """``make_batch(step, state)`` for the loop: rollouts of the current policy, rewarded."""
    order_cache: dict[int, np.ndarray] = {}
    n = len(examples)

    def pick(step: int) -> list[Example]:
        picked = []
        for p in range(step * cfg.prompts_per_step, (step + 1) * cfg.prompts_per_step):
            epoch = p // n
            if epoch not in order_cache:
                order_cache[epoch] = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            picked.append(examples[order_cache[epoch][p % n]])
        return picked

    def make_batch(step: int, state):
        chosen = pick(step)
        alphas_p = alpha_schedule(cfg.alphas, len(chosen), seed=cfg.seed * 1_000_003 + step)
        prompts = [agent.prompt_ids(ex, float(a)) for ex, a in zip(chosen, alphas_p)]
        policy = merge_lora(state.model())
        samples = generate(
            policy, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            num_samples=cfg.group_size, stop_token_ids=agent.stop_token_ids, seed=cfg.seed + step,
            include_stop=True, mesh=agent.mesh, progress=False,
        )
        correct = np.zeros((len(chosen), cfg.group_size), bool)
        refused = np.zeros_like(correct)
        flat_prompts, responses, old_logprobs = [], [], []
        for i, (example, group) in enumerate(zip(chosen, samples)):
            task = get_task(example.task)
            for j, g in enumerate(group):
                text = agent.decode(g.tokens[:-1] if g.stop_token is not None else g.tokens)
                verdict = task.check(example, text)
                correct[i, j], refused[i, j] = verdict.correct, verdict.refused
                flat_prompts.append(prompts[i])
                responses.append(g.tokens)
                old_logprobs.append(g.logprobs)
        rewards_pg = np.asarray(rewards.scenario_reward(
            correct, refused, np.repeat(alphas_p[:, None], cfg.group_size, 1), cfg.gamma))
        advantages = np.asarray(rewards.group_advantages(rewards_pg, normalize=cfg.normalize_advantages))
        batch = rl_batch_from_rollouts(
            flat_prompts, responses, old_logprobs, advantages.reshape(-1).tolist(),
            pad_id=pad_id, length_buckets=cfg.length_buckets,
        )
        if reference_model is not None:
            batch = batch.replace(ref_logprobs_bt=sequence_logprobs(reference_model, batch))
        metrics = rollout_metrics(alphas_p, correct, refused, rewards_pg)
        metrics["response_tokens"] = float(np.mean([len(r) for r in responses]))
        return batch, metrics

    return make_batch
