"""Built-in tracking components (registration only: cheap to import)."""
