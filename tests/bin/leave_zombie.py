"""Leave a zombie in this rank's process group, then exit 0.

The rank forks a child that exits at once and never reaps it; once the child is a zombie the
rank exits, and the zombie is re-parented to whoever reaps orphans (or does not: Docker's PID 1
without `--init`, or a test that is a child subreaper). A launcher that counted zombies as
live group members would wait out its whole grace period here.
"""

import os
import time

pid = os.fork()
if pid == 0:
    os._exit(0)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    if stat[stat.rfind(b")") + 2 :][:1] == b"Z":
        break
    time.sleep(0.005)
print(f"left zombie {pid}", flush=True)
