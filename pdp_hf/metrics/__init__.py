"""Metrics shipped with the package, loaded by path so they work offline."""

import os

GLUE_METRIC_PATH = os.path.join(os.path.dirname(__file__), "glue", "glue.py")


def load_glue_metric(task: str):
    """`evaluate.load` of the bundled GLUE metric for `task` (MNLI: 'mnli' for both dev sets)."""
    import evaluate

    return evaluate.load(GLUE_METRIC_PATH, task)
