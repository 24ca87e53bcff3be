"""The lab's experiments, one module per paper; each follows the contract in the README ("Adding an experiment")."""

EXPERIMENTS = ("superposition", "grokking", "induction", "sae")  # tests and `make smoke` iterate over these
