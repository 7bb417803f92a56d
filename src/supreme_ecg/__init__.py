"""SuPreME-style supervised multimodal ECG pre-training: the logic behind the Snakemake workflow.

One module per stage (``demo``, ``preprocess``, ``extract``, ``pretrain``, ``zeroshot``); each is
importable and testable without Snakemake.
"""

__version__ = "0.1.0"
