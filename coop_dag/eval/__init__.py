"""Evaluation: a pair's merged-patch test (evaluate), reading run logs (runlogs), the section-6
metrics, any model's eval (model_eval), the lineage store and the distillation report."""
