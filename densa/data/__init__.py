"""Data: SentencePiece training and HF export, preprocessing to Megatron .bin/.idx + manifest,
packed/blended pretraining datasets with a resumable sampler, and SFT chat data.

Modules are imported directly (`from densa.data.preprocess import preprocess`) so that importing
the package stays cheap; see docs/data.md for the public API.
"""
