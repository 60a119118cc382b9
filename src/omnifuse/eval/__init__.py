from omnifuse.eval.vqa import VQAResult, evaluate_vqa, exact_match, normalize_answer

__all__ = ["VQAResult", "evaluate_vqa", "exact_match", "normalize_answer"]
