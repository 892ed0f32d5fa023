"""redis-py against the node cache: LMCache's Redis key pattern, pipelines,
MGET, both RESP versions, the asyncio client LMCache uses, and AUTH.

usage: redis_py_client.py PORT [PASSWORD]
"""
import asyncio
import os
import sys

import redis
import redis.asyncio


def lmcache_round_trip(r, key):
    # LMCache's RedisConnector: SET <key>kv_bytes, SET <key>metadata,
    # EXISTS <key>metadata, GET metadata then kv_bytes.
    kv = os.urandom(256 * 1024)
    meta = os.urandom(28)
    assert not r.exists(key + "metadata")
    assert r.set(key + "kv_bytes", kv)
    assert r.set(key + "metadata", meta)
    assert r.exists(key + "metadata") == 1
    assert r.get(key + "metadata") == meta
    assert r.get(key + "kv_bytes") == kv
    assert r.delete(key + "metadata") == 1
    assert r.exists(key + "metadata") == 0


def main():
    port = int(sys.argv[1])
    password = sys.argv[2] if len(sys.argv) > 2 else None

    for protocol in (2, 3):
        r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, password=password)
        assert r.ping()
        key = f"vllm@model@1@0@{protocol}abc@half"
        lmcache_round_trip(r, key)

        values = {f"p{protocol}:{i}": os.urandom(1000 + i) for i in range(300)}
        pipe = r.pipeline(transaction=False)
        for k, v in values.items():
            pipe.set(k, v)
        assert all(pipe.execute())
        pipe = r.pipeline(transaction=False)
        for k in values:
            pipe.get(k)
        assert pipe.execute() == list(values.values())

        pipe = r.pipeline()  # MULTI/EXEC
        pipe.set("tx", b"1").get("tx").exists("tx", "nope")
        assert pipe.execute() == [True, b"1", 1]

        keys = list(values)[:50] + ["missing"]
        got = r.mget(keys)
        assert got[:-1] == [values[k] for k in keys[:-1]] and got[-1] is None
        assert r.mset({"m1": b"a", "m2": b"b"}) and r.mget("m1", "m2") == [b"a", b"b"]
        nx = f"nx{protocol}"
        assert r.set(nx, b"1", nx=True) and r.set(nx, b"2", nx=True) is None
        assert r.get(nx) == b"1"
        assert r.set(nx, b"3", xx=True) and r.get(nx) == b"3"
        assert r.strlen(nx) == 1
        assert r.dbsize() >= len(values)
        info = r.info()
        assert "used_memory" in info and "maxmemory" in info, info
        r.close()

    async def run_async():
        r = redis.asyncio.from_url(
            f"redis://127.0.0.1:{port}", password=password
        )
        v = os.urandom(64 * 1024)
        await r.set("async:kv_bytes", v)
        await r.set("async:metadata", b"m")
        assert await r.exists("async:metadata") == 1
        assert await r.get("async:kv_bytes") == v
        await r.aclose()

    asyncio.run(run_async())

    if password:
        bad = redis.Redis(host="127.0.0.1", port=port, protocol=2, password="wrong")
        try:
            bad.ping()
            raise AssertionError("a wrong password was accepted")
        except redis.exceptions.AuthenticationError:
            pass
    print("redis-py: ok")


if __name__ == "__main__":
    main()
