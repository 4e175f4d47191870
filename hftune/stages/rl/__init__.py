"""The RL stage (`hftune ppo`): PPO, RLOO and GRPO against a frozen reward model.

stage.py       the stage (the registry's module): prepare, run, summary
config.py      its config keys, defaults and checks, and the parser (no torch or TRL: `--help`)
rewards.py     the prompts, the one reward every algorithm gets, the held-out evaluator
ppo.py         TRL's experimental PPOTrainer (the only module importing `trl.experimental`)
group.py       TRL's RLOOTrainer / GRPOTrainer
guardrails.py  metrics.jsonl, held-out checks and the alarms that stop a run going wrong
progress.py    the console: a progress bar and one short line a logged step
seeding.py     one seed for the run, before anything draws (what draws, what a GPU cannot repeat)
"""
