"""The py-eureka-client flow against Muster, run by transport-http/tests/eureka.rs.

A provider registers through node A and renews; a consumer registers through
node B and discovers the provider there (full fetch, then deltas checked by
apps__hashcode); the provider outlives its lease duration by renewing, changes
its status (override, then removed) and cancels, and the consumer sees each
change. Every wait is bounded; any failure exits non-zero with the reason.
Prints one `STEP name` line per step reached, then `OK`.

usage: eureka_flow.py URL_A URL_B   (e.g. http://127.0.0.1:8848/eureka)
The provider runs in a child process of this script (`eureka_flow.py provider URL`).
"""

import asyncio
import os
import subprocess
import sys
import time

import py_eureka_client.eureka_client as ec

RENEWAL_SECS = 1
DURATION_SECS = 4


def step(name):
    print(f"STEP {name}", flush=True)


async def until(what, f, within=20.0):
    deadline = time.monotonic() + within
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)


def provider_instances(consumer):
    app = consumer.applications.get_application("PY-PROVIDER") if consumer.applications else None
    return app.instances if app else []


def provider_status(consumer):
    inst = provider_instances(consumer)
    return inst[0].status if len(inst) == 1 else None


def make_provider(url):
    return ec.EurekaClient(
        eureka_server=url,
        app_name="py-provider",
        instance_id="127.0.0.31:py-provider:9031",
        instance_ip="127.0.0.31",
        instance_host="127.0.0.31",
        instance_port=9031,
        renewal_interval_in_secs=RENEWAL_SECS,
        duration_in_secs=DURATION_SECS,
        metadata={"zone": "z1", "version": "1.2.3"},
        should_discover=False,
    )


async def provider_process(url):
    """The provider in its own process, as a service is: it obeys one
    command a line on stdin and exits after `stop` (py-eureka-client's
    heartbeat thread outlives `stop()` and would register it again)."""
    provider = make_provider(url)
    await provider.start()
    print("registered", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "out-of-service":
            await provider.status_update("OUT_OF_SERVICE")
        elif line == "delete-override":
            await provider.delete_status_override()
        elif line in ("stop", ""):
            await provider.stop()
            print("stopped", flush=True)
            os._exit(0)
        print("done", flush=True)


class Provider:
    def __init__(self, url):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "provider", url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.expect("registered")

    def expect(self, word):
        line = self.proc.stdout.readline().strip()
        if line != word:
            raise SystemExit(f"the provider answered {line!r}, not {word!r}")

    def send(self, command, answer="done"):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        self.expect(answer)


async def main(url_a, url_b):
    provider = Provider(url_a)
    try:
        await flow(provider, url_b)
    finally:
        if provider.proc.poll() is None:
            provider.proc.kill()
    # The consumer's heartbeat thread cannot be stopped either.
    os._exit(0)


async def flow(provider, url_b):
    step("provider-registered")
    consumer = ec.EurekaClient(
        eureka_server=url_b,
        app_name="py-consumer",
        instance_ip="127.0.0.32",
        instance_host="127.0.0.32",
        instance_port=9032,
        renewal_interval_in_secs=RENEWAL_SECS,
        duration_in_secs=DURATION_SECS,
    )
    await consumer.start()
    step("consumer-registered")

    # The consumer's cache is filled by its full fetch and then its deltas.
    inst = await until("the consumer to discover the provider", lambda: provider_instances(consumer))
    i = inst[0]
    if (i.instanceId, i.ipAddr, i.port.port, i.status) != ("127.0.0.31:py-provider:9031", "127.0.0.31", 9031, "UP"):
        raise SystemExit(f"unexpected provider instance {vars(i)}")
    if i.metadata.get("version") != "1.2.3" or i.leaseInfo.durationInSecs != DURATION_SECS:
        raise SystemExit(f"metadata or lease not kept: {i.metadata} {vars(i.leaseInfo)}")
    step("discovered")

    # Renewing keeps it past its lease duration.
    await asyncio.sleep(DURATION_SECS * 2)
    if provider_status(consumer) != "UP":
        raise SystemExit(f"the provider did not survive its lease duration by renewing: {provider_status(consumer)}")
    step("renewed-past-duration")

    provider.send("out-of-service")
    await until("OUT_OF_SERVICE at the consumer", lambda: provider_status(consumer) == "OUT_OF_SERVICE")
    step("status-out-of-service")

    provider.send("delete-override")
    await until("UP again at the consumer", lambda: provider_status(consumer) == "UP")
    step("status-up-again")

    provider.send("stop", "stopped")
    provider.proc.wait(timeout=10)
    await until("the cancel at the consumer", lambda: provider_status(consumer) is None)
    step("cancelled")

    print("OK", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "provider":
        asyncio.run(provider_process(sys.argv[2]))
    else:
        asyncio.run(main(sys.argv[1], sys.argv[2]))
