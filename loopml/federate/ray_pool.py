"""Clients as Ray actors: each holds its rows in its own process (on a cluster: on its own node), and
the server's questions go to all of them at once. The messages are the same as in-process."""

from __future__ import annotations

from typing import Any

from loopml.federate.clients import Channel, Client, Message


class RayPool:
    """``specs``: (name, source, config dict, has_test) per client; call inside ``ray_cluster``."""

    def __init__(self, specs: list[tuple[str, Any, dict, bool]], channel: Channel) -> None:
        import ray

        self.channel = channel
        self._names = [s[0] for s in specs]
        # a share of the cluster's CPUs each, so every client is placed even when they outnumber the CPUs
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        share = max(0.01, min(1.0, cpus / max(1, len(specs))))
        actor = ray.remote(Client).options(num_cpus=share)
        self.actors = [actor.remote(name, source, config, has_test, 1) for name, source, config, has_test in specs]

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def ask(self, method: str, *args: Any) -> list[Message]:
        """Every client's answer to ``method(*args)``, asked at once, each through the channel."""
        import ray

        shared = [ray.put(a) for a in args]  # one copy of the global weights for every client
        refs = [getattr(a, method).remote(*shared) for a in self.actors]
        return [self.channel.deliver(m) for m in ray.get(refs)]
