"""The papers' recipes: the table of tasks × models × methods (paper.py), and `explain`, which
says what a recipe will do before it runs (explain.py)."""
