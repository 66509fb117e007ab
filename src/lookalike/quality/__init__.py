"""Quality: the shipped corpus, evaluation, and the demo."""
