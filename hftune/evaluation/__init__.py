"""The evaluation harness (`hftune eval`): suite parsing (`suite`), the held-out prompts (`prompts`; the
variants sharing weights, their cached replies and log-probabilities come from `models/`), per-prompt
metrics with paired bootstrap CIs (`measures`, `stats`, `text_metrics`, `judge`), whether each trained
variant was optimised against the reward model scoring it (`reward_exposure`, read from its lineage), the
outputs (`report`), and the command itself (`harness`)."""
