"""Splash Flows: verified movement, cataloguing, archiving and pruning of ALS Beamline 7.3.3 data."""

__version__ = "0.1.0"

#: Environment variable naming the configuration file (here, not in ``config``, so the CLI's help can name it
#: without importing pydantic).
CONFIG_ENV_VAR = "SPLASH_FLOWS_CONFIG"
