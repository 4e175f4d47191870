"""`hftune label`: people rank a model's own samples in a browser, and the rankings train the reward model.

`items` samples K completions per training prompt (`models/generation`, as the eval does: seeded, cached),
`app` serves the page, `store` appends every submission to labels.jsonl (the `ranked` converter's schema),
`serve` ties them together for the command, and `stats` reports counts and agreement between labellers.
"""
