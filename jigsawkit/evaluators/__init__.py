"""Built-in evaluators components (registration only: cheap to import)."""
