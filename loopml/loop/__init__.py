"""The loop: drift monitoring, retraining from feedback, gated promotion."""
