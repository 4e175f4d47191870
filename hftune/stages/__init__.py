"""Training stages: one module a stage, the stage table in `registry`, the shared skeleton in `common`."""
