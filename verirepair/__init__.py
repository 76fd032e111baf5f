"""verirepair: sound verification and proof-backed repair of ReLU networks."""

__version__ = "0.1.0"
