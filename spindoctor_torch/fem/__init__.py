"""Differentiable P1 finite-element assembly."""

from .assemble import FEMatrices, assemble, assemble_mass
from .pattern import FEMPattern, fem_pattern

__all__ = ["FEMatrices", "assemble", "assemble_mass", "FEMPattern", "fem_pattern"]
