"""The evaluation harness (`hftune eval`): suite parsing (`suite`), model variants sharing weights and
their cached replies (`variants`, `cache`), per-prompt metrics with paired bootstrap CIs (`stats`,
`text_metrics`, `judge`), whether each trained variant was optimised against the reward model scoring it
(`reward_exposure`, read from its lineage), the outputs (`report`), and the command itself (`harness`)."""
