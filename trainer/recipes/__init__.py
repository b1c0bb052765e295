"""Training recipes: one module per loop (`grpo`, `sft`, `rm`, `dpo`), sharing setup from
`common` (and, for the two pairwise recipes, `pairs`).

>>> summary = train(load_config("examples/configs/grpo_tiny.yaml"))  # doctest: +SKIP

`train` picks the recipe named by `cfg.recipe`; `evaluate_model` runs the held-out eval
alone (what `referee eval` does).
"""

from __future__ import annotations

from typing import Any

from referee.trainer.config import TrainConfig

__all__ = ["evaluate_model", "train"]


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Runs `cfg.recipe` to the end (or from its latest checkpoint with `resume`);
    returns the run's summary.json contents."""
    if cfg.recipe == "grpo":
        from referee.trainer.recipes import grpo

        return grpo.train(cfg, resume=resume)
    if cfg.recipe == "rm":
        from referee.trainer.recipes import rm

        return rm.train(cfg, resume=resume)
    if cfg.recipe == "dpo":
        from referee.trainer.recipes import dpo

        return dpo.train(cfg, resume=resume)
    from referee.trainer.recipes import sft

    return sft.train(cfg, resume=resume)


def evaluate_model(cfg: TrainConfig) -> dict[str, Any]:
    """The eval row of `cfg.model` on the held-out split, scored by `cfg.reward.sources`
    (`eval/accuracy`, `eval/mean_reward`, `eval/pass@k`, counts per status)."""
    import torch

    from referee.trainer import distributed
    from referee.trainer.config_load import ConfigError
    from referee.trainer.recipes import common
    from referee.trainer.rollout.hf import HFEngine

    if not cfg.reward.sources:
        raise ConfigError("reward.sources", "is empty; eval scores through the reward services")
    if not cfg.data.has_eval_split:
        raise ConfigError("data.eval_path", "is null and data.eval_fraction 0: no held-out rows")
    common.set_threads(cfg.torch_threads)
    distributed.seed_everything(cfg.seed)
    model, tokenizer = common.load_model_and_tokenizer(cfg)
    model.eval()
    splits = common.load_data(cfg, tokenizer)
    with common.reward_scorer(cfg) as scorer, torch.no_grad():
        engine = HFEngine(model, tokenizer)
        seed = common.step_seed(cfg.seed, 0, "eval")
        return common.evaluate(cfg, engine, tokenizer, splits.eval, scorer, seed=seed)
