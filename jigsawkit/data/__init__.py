"""Built-in data components (registration only: cheap to import)."""
