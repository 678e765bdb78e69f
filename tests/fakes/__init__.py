"""Test doubles, clearly named as fakes. Never imported by the package itself."""
