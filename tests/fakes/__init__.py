"""Test doubles (never imported by the package): a settable clock and tiers that observe or crash on delete."""
