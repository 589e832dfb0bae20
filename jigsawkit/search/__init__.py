"""Built-in search components (registration only: cheap to import)."""
