"""Built-in backbones components (registration only: cheap to import)."""
