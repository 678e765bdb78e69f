"""Storage tiers: where copies live. Interface in ``base``; one module per kind of storage."""
