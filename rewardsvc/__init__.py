"""The service framework: server skeleton, client, auth, metrics, cache and worker pool."""
