"""Shadow sync after an outage, at fleet size: N things each with a change made while the
cloud link was cut; from the link's return, how long until nothing is pending, and the
highest rate of sync requests the cloud saw in any 1 s window (it must stay within the
configured `rate`, and so within IoT Core's limits).

    python bench/shadow_sync_fleet.py --things 1000            # default rate: 20 requests/s

The cloud is a second Lichen gateway (the same AWS shadow semantics) behind a cuttable link,
as in tests/shadow/test_sync_fleet.py, whose rig this reuses.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.shadow.sync_helpers import ShadowClient, SyncRig, wait_until  # noqa: E402
from tests.shadow.test_sync_fleet import cloud_updates_by_sync  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--things", type=int, default=1000)
    p.add_argument("--rate", type=float, default=20.0, help="shadow_sync.rate (requests/s)")
    args = p.parse_args(argv)
    n = args.things
    with tempfile.TemporaryDirectory(prefix="sync-fleet-") as tmp:
        rig = SyncRig(Path(tmp), {"things": ["fleet-*"], "rate": args.rate,
                                  "burst": int(args.rate)})
        local = ShadowClient(rig.gw.port, "local-app")
        cloud = ShadowClient(rig.cloud.port, "cloud-app")
        try:
            rig.wait_connected()
            for i in range(n):
                local.update(f"fleet-{i}", {"reported": {"n": i, "phase": 1}})
            wait_until(lambda: cloud_updates_by_sync(cloud) >= n, "first sync", rig.gw,
                       timeout=n / args.rate * 3 + 60)
            wait_until(lambda: rig.sync_status()["pending"] == 0, "nothing pending", rig.gw,
                       timeout=120)
            rig.link.cut()
            rig.wait_connected(False)
            for i in range(n):
                local.update(f"fleet-{i}", {"reported": {"phase": 2}})
            wait_until(lambda: rig.sync_status()["pending"] == n, "all pending", rig.gw,
                       timeout=120)
            before = cloud_updates_by_sync(cloud)
            rig.link.restore()
            start = time.monotonic()
            samples = [(start, before)]
            while time.monotonic() - start < n / args.rate * 4 + 120:
                time.sleep(1.0)
                samples.append((time.monotonic(), cloud_updates_by_sync(cloud)))
                if rig.sync_status()["pending"] == 0:
                    break
            took = time.monotonic() - start
            updates = samples[-1][1] - before
            pairs = zip(samples, samples[1:], strict=False)
            peak = max((b[1] - a[1]) / (b[0] - a[0]) for a, b in pairs)
            load = os.getloadavg()
            print(f"{n} things, rate {args.rate:g}/s: nothing pending {took:.1f} s after the "
                  f"link returned; {updates} cloud updates by the sync (one per thing: "
                  f"{updates == n}); peak {peak:.1f} updates/s in a 1 s window (each also "
                  f"needs a GET, so requests/s is about twice that); load average "
                  f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        finally:
            local.close()
            cloud.close()
            rig.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
