"""densa: pretraining and finetuning for language models dense in capacity and sparse in compute."""

__version__ = "0.1.0"
