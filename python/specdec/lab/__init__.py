"""The miniature lab: the seed papers' experiments, small enough for 2 CPU cores.

``scenes``: the synthetic multimodal task (drawn scenes, captions, questions; deterministic by
seed). ``models``: the tiny LLaVA target and its drafters, and the shipped trained weights.
``train``: ``python -m specdec.lab.train`` re-trains them (minutes). ``demo``: ``specdec demo``.
"""
