"""The RL stage (`hftune ppo`): PPO, RLOO and GRPO against a frozen reward model."""
