"""Splash Flows: verified movement, cataloguing, archiving and pruning of ALS Beamline 7.3.3 data."""

__version__ = "0.1.0"
