"""Exporters of converted networks to other formats (optional dependencies)."""
from __future__ import annotations

from .nir import export_nir, read_nir, to_nir

__all__ = ["export_nir", "read_nir", "to_nir"]
