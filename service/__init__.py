"""fpgalab service: the REST API, lab state in Redis, and the worker that runs jobs."""
