"""Evaluation: label metrics, generation metrics (ROUGE, EM / F1, copying), the faithfulness judge, similarity, cost."""
