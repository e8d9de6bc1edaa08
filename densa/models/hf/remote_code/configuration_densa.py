"""Config for densa decoder variants transformers has no class for.

Written next to exported weights by densa; needs only transformers (densa need not be installed).
A Llama config plus `gated_ffn`: False selects the plain FFN act(x W_up) W_down; and
`activation_threshold` T > 0 (hidden_act relu): FATReLU, x if x > T else 0.
"""

from transformers import LlamaConfig


class DensaConfig(LlamaConfig):
    model_type = "densa"
