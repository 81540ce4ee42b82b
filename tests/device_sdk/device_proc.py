"""A device process for the restart tests: `python device_proc.py MODE ...`.

    publish THING CERT KEY CA PORT QUEUE FIRST COUNT
        connect in the background, queue COUNT readings numbered from FIRST, print
        "queued", then wait to be killed
    flush THING CERT KEY CA PORT QUEUE TIMEOUT
        send what QUEUE holds; print "left N"; exit 0 once it is empty
"""

from __future__ import annotations

import sys
import time

from device_sdk import Backoff, DeviceClient


def main(argv: list[str]) -> int:
    mode, thing, cert, key, ca, port, queue = argv[:7]
    client = DeviceClient(thing, cert, key, ca=ca, host="127.0.0.1", port=int(port),
                          offline_queue=queue, connect_timeout=2.0,
                          backoff=Backoff(initial=0.05, maximum=0.3, stable_after=0.5))
    client.start()
    if mode == "publish":
        first, count = int(argv[7]), int(argv[8])
        for i in range(first, first + count):
            client.publish(f"things/{thing}/reading", str(i))
        print("queued", flush=True)
        time.sleep(60)   # the test kills us long before this
        return 0
    ok = client.flush(float(argv[7]))
    print(f"left {len(client.queue)}", flush=True)
    client.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
