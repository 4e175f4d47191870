"""Publishing finished artifacts: model cards, Hub uploads and LoRA merges."""
