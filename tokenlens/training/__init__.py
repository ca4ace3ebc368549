"""Post-training: data loading, the method registry and the trainer (``tokenlens train``)."""
