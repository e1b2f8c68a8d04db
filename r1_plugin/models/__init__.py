"""Model registry, config conversion and architecture implementations."""
