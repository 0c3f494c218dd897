"""CrispML: the nine CRISP-DM methods as DVC stages, with MLflow tracking and auditable scores.

Nothing is imported here on purpose: `crispml --help` must stay fast, and each stage
pays only for the libraries it uses.
"""

__version__ = "0.1.0"
