"""Configuration: YAML with line marks, schema assembly, validation, overrides."""
