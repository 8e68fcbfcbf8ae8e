"""Stage 3: scenario-conditioned policy gradient.

Each step draws ``prompts_per_step`` training queries and an α per prompt (written into the
prompt), samples ``group_size`` responses per prompt with the current policy, rewards them
(+1 correct, 0 wrong, (1 − α)^γ for the refusal), turns group rewards into advantages and takes
one clipped policy-gradient update. Prompts, α and sampling seeds are functions of the step index,
so a resumed run reproduces the uninterrupted one.

Regulariser (``replay_rows``): each step also carries that many of the agent's own plain-prompt
answers (the SFT stage's replay rows), trained by cross-entropy beside the policy loss
(``RLConfig.replay_coef``; InstructGPT's "PPO-ptx"). The rollouts only ever see scenario prompts,
so nothing else holds the plain-prompt behaviour in place while the policy moves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from disrouter_jax.agents import Agent
from disrouter_jax.generation import generate
from disrouter_jax.selfaware import rewards
from disrouter_jax.selfaware.data import TokenizedSFTExample, alpha_schedule, bucket_pad_batch
from disrouter_jax.tasks.example import Example
from disrouter_jax.tasks.registry import get_task
from disrouter_jax.training.lora import merge_lora
from disrouter_jax.training.rl import rl_batch_from_rollouts
from disrouter_jax.training.sft import TokenBatch, sequence_logprobs


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
    replay_rows: int = 0


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


def _epoch_picker(n: int, per_step: int, seed: tuple[int, ...]):
    """``pick(step)``: indices [step * per_step, (step + 1) * per_step) of an endless stream of
    seeded per-epoch permutations of range(n) (a pure function of the step)."""
    order_cache: dict[int, np.ndarray] = {}

    def pick(step: int) -> list[int]:
        picked = []
        for p in range(step * per_step, (step + 1) * per_step):
            epoch = p // n
            if epoch not in order_cache:
                order_cache[epoch] = np.random.default_rng([*seed, epoch]).permutation(n)
            picked.append(int(order_cache[epoch][p % n]))
        return picked

    return pick


def rl_batch_fn(agent: Agent, examples: Sequence[Example], cfg: RolloutConfig, *,
                pad_id: int, reference_model=None, replay: Sequence[TokenizedSFTExample] = ()):
    """``make_batch(step, state)`` for the loop: rollouts of the current policy, rewarded, plus
    ``cfg.replay_rows`` rows of ``replay`` (module docstring)."""
    if cfg.replay_rows and not replay:
        raise ValueError(f"RolloutConfig.replay_rows={cfg.replay_rows}: no replay rows given (the agent "
                         "has no training query it answers right at least half the time)")
    pick_prompts = _epoch_picker(len(examples), cfg.prompts_per_step, (cfg.seed,))
    pick_replay = _epoch_picker(len(replay), cfg.replay_rows, (cfg.seed, 11)) if cfg.replay_rows else None

    def pick(step: int) -> list[Example]:
        return [examples[i] for i in pick_prompts(step)]

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
        if pick_replay is not None:
            rows = [replay[i] for i in pick_replay(step)]
            batch = batch.replace(replay=TokenBatch.from_padded(
                bucket_pad_batch(rows, cfg.length_buckets, pad_id, batch_size=cfg.replay_rows)))
        metrics = rollout_metrics(alphas_p, correct, refused, rewards_pg)
        metrics["response_tokens"] = float(np.mean([len(r) for r in responses]))
        return batch, metrics

    return make_batch
