"""Test doubles (fakes) -- used only by tests, never by the package."""
