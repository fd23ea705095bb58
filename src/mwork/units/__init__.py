"""Units: what mwork measures and intervenes on (neurons, directions, dictionary features), their
files (``load_units``) and the one intervention primitive (:mod:`mwork.units.edit`)."""

from mwork.units.base import OPS, UNIT_KINDS, UnitGroup, UnitSet, register_unit_kind
from mwork.units.dictionary import ACTIVATIONS, Codebook, Dictionary
from mwork.units.directions import Directions, DirectionGroup
from mwork.units.edit import POSITIONS, Intervention, PositionTracker, UnitEdit, check_layers
from mwork.units.files import as_units, load_units, read_unit_file
from mwork.units.neurons import FeatureGroup, NeuronUnits, neuron_groups

__all__ = ["ACTIVATIONS", "OPS", "POSITIONS", "UNIT_KINDS", "Codebook", "Dictionary", "DirectionGroup", "Directions",
           "FeatureGroup", "Intervention",
           "NeuronUnits", "PositionTracker", "UnitEdit", "UnitGroup", "UnitSet", "as_units", "check_layers",
           "load_units", "neuron_groups", "read_unit_file", "register_unit_kind"]
