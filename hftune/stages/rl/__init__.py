"""The machinery of the RL stage (`hftune/stages/ppo.py`, `hftune ppo`): PPO, RLOO and GRPO against a frozen
reward model and/or a task verifier.

config.py      its config keys, defaults and checks, and the parser (no torch or TRL: `--help`)
rewards.py     the prompts, the one reward every algorithm gets, the held-out evaluator
ppo_config.py  the config class of hftune's PPO (TRL's PPOConfig keys)
ppo_trainer.py hftune's PPO loop (rollout, score, GAE, clipped updates, checkpoints) on the Trainer
ppo_objective.py  PPO's arithmetic: GAE, the clipped losses, KL estimators, whitening (tensor functions)
guardrails.py  metrics.jsonl, held-out checks and the alarms that stop a run going wrong
progress.py    the console: a progress bar and one short line a logged step
seeding.py     one seed for the run, before anything draws (what draws, what a GPU cannot repeat)
"""
