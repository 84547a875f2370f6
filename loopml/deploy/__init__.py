"""Deployment: ``loopml package`` (Dockerfile, compose, Kubernetes, CI workflow), the CI gate, the registry seed."""
