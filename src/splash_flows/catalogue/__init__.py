"""Catalogue: where scientists find their data. Interface in ``base``; SciCat and embedded implementations."""
