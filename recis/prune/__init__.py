"""recis.prune: SlimGPT structured pruning (arXiv 2412.18110) of transformer towers."""
