"""MATH-style answer tasks: the task, answer extraction, grading and its worker pool."""
