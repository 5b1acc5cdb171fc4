"""Integration and end-to-end tests against the local test bed (``e2e.cluster``)."""
