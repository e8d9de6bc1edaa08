"""HF interop: import Llama/Mistral/Qwen2 folders into densa, export densa models as HF folders.

config, state = load_hf_state("path/to/hf")      # ModelConfig + densa state dict
model = load_hf_model("path/to/hf")              # a densa Transformer
export_hf("out/hf", model)                       # loads with AutoModelForCausalLM.from_pretrained
"""

from densa.models.hf.config_map import config_from_hf, config_to_hf, hf_flavour
from densa.models.hf.exporter import export_hf, save_hf
from densa.models.hf.importer import is_hf_folder, load_hf_config, load_hf_model, load_hf_state
from densa.models.hf.mapping import KeyMapping, densa_to_hf, hf_to_densa, state_mapping

__all__ = [
    "KeyMapping",
    "config_from_hf",
    "config_to_hf",
    "densa_to_hf",
    "export_hf",
    "hf_flavour",
    "hf_to_densa",
    "is_hf_folder",
    "load_hf_config",
    "load_hf_model",
    "load_hf_state",
    "save_hf",
    "state_mapping",
]
