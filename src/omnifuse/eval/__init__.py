"""Evaluation. The metrics, statistics and run comparison import without torch; the VQA evaluation
(which drives a model) loads on first use."""

from omnifuse.eval.metrics import exact_match, normalize_answer, vqa_score

__all__ = ["VQAResult", "evaluate_vqa", "exact_match", "normalize_answer", "vqa_score"]


def __getattr__(name: str):
    if name in ("VQAResult", "evaluate_vqa"):
        from omnifuse.eval import vqa

        return getattr(vqa, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
