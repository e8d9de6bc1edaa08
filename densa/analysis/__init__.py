"""Analyses of trained models. `modularity`: neuron specialisation, functional experts, emergence.

from densa.analysis.probes import build_probes, load_probes
from densa.analysis.modularity import analyze_modularity, emergence
"""
