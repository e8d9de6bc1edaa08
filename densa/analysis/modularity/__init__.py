"""Emergent Modularity: neuron specialisation, functional experts, perturbation, emergence in pretraining.

from densa.analysis.modularity import Settings, analyze_modularity, emergence
"""

from densa.analysis.modularity.analyze import Settings, analyze_modularity
from densa.analysis.modularity.emergence import emergence

__all__ = ["Settings", "analyze_modularity", "emergence"]
