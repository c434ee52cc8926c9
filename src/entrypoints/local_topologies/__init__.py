"""Supervised multi-node Redis topologies on loopback: a Sentinel set and a Redis Cluster.

For development and for tests of failover and resharding. Every node is a
:class:`~entrypoints.local_redis.LocalRedis`, so each one gets what a single local server
gets: a free port, a foreground child that dies with its parent, a log and a locked data dir
of its own, and a check that the server answering on the port is our child. The nodes are
wired together with plain commands, never with ``redis-cli`` (absent beside the embedded
Valkey binary).

Usage::

    with LocalSentinelSet(Path(".conveyor/sentinel")) as sentinels:
        run_app(sentinels.url)  # redis+sentinel://127.0.0.1:<p1>,.../conveyor

    with LocalCluster(Path(".conveyor/cluster")) as cluster:
        run_app(cluster.url)  # redis+cluster://127.0.0.1:<p1>,...
"""

from entrypoints.local_topologies.cluster import LocalCluster
from entrypoints.local_topologies.nodes import LocalTopologyError
from entrypoints.local_topologies.sentinel import LocalSentinelSet

__all__ = ["LocalCluster", "LocalSentinelSet", "LocalTopologyError"]
