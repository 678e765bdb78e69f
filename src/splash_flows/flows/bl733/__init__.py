"""Beamline 7.3.3 flows and their deployments (``prefect.yaml`` beside this file)."""
