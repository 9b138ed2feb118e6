"""Settings: ``base`` holds everything; ``local`` (default) and ``test`` adjust it."""
