"""Evaluation: answering benchmark items on actor pools, and the hallucination metrics."""
