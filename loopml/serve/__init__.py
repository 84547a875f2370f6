"""Serving: a FastAPI app over a micro-batcher and a model runner, with prediction log and feedback."""
