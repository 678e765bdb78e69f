"""Beamline-specific knowledge: one sub-package per beamline (file formats, scan grouping, dataset fields).

Nothing outside this package knows how a beamline names or writes its files.
"""
