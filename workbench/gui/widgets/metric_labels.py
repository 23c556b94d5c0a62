"""Names of the evaluation metrics, apart from the plots that draw them: the Train tab's labels and the sweep
table need the names without importing pyqtgraph."""

from workbench.core.scorers import SCORERS

TASK_METRICS = tuple(SCORERS)  # exact_match, regex, json_valid, json_exact, json_fields, label: shares in [0, 1]
RETENTION_METRICS = ("retention_agreement", "retention_ppl_ratio")
LABELS = {"exact_match": "exact match", "json_valid": "valid JSON", "json_exact": "exact JSON", "json_fields": "JSON fields", "regex": "regex",
          "label": "label", "retention_agreement": "agreement with base", "retention_ppl_ratio": "perplexity ÷ base",
          "perplexity": "perplexity"}
