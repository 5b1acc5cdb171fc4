"""The EmbeddingService operator: rendering, kopf handlers, autoscaler and GPU-hour ledger."""
