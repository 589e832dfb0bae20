"""Built-in pretext components (registration only: cheap to import)."""
