"""Fault localisation: which hidden neurons cause a property violation.

    ranking = localize(net, cex, benign, spec, method="causal", layer="last",
                       options=LocalizeOptions(seed=0))
    ranking.neurons_of(k)   # neuron indices of hidden layer k, most suspicious first

Methods (``LOCALIZERS``): ``causal`` (CARE's causal attribution, the default),
``gradient`` (CARE's gradient baseline), ``shap`` (SHARPEN's coarse-to-fine Deep SHAP),
``activation`` (activation divergence), ``random`` (seeded baseline).
"""

from verirepair.localize.api import LOCALIZERS, hidden_layers, localize, ranking_text
from verirepair.localize.measure import spec_measure, violation_measure
from verirepair.localize.types import LocalizeOptions, NoBenignInputs, Ranking

__all__ = ["LOCALIZERS", "LocalizeOptions", "NoBenignInputs", "Ranking", "hidden_layers",
           "localize", "ranking_text", "spec_measure", "violation_measure"]
