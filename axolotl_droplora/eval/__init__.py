"""Evaluation beside the method: prompts, the papers' scorers, greedy generation and scoring,
held-out answer loss, and the charts. May use the method; training and Axolotl glue never import it."""
