"""The native Redis queue adapter: `RedisJobQueue` on `redis.asyncio` with Lua scripts."""

from adapters.redis_queue.queue import RedisJobQueue

__all__ = ["RedisJobQueue"]
