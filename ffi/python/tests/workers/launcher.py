"""Launcher checks, by argv[1]:
env         print this rank's launcher environment as JSON
fail        rank 1 exits with status 3 at once; rank 0 writes its pid to argv[2] and sleeps
cpus        print the CPUs this rank may run on
"""

import json
import os
import sys
import time

mode = sys.argv[1]
keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "OXCCL_RANK", "OXCCL_WORLD_SIZE", "OXCCL_LOCAL_RANK", "OXCCL_ROOT", "OXCCL_SECRET"]
if mode == "env":
    # One write (the launcher runs Python unbuffered): lines of different ranks never interleave.
    sys.stdout.write("ENV " + json.dumps({k: os.environ.get(k) for k in keys}) + "\n")
elif mode == "cpus":
    sys.stdout.write("CPUS %s %s\n" % (os.environ["RANK"], sorted(os.sched_getaffinity(0))))
elif mode == "fail":
    if os.environ["RANK"] == "1":
        time.sleep(0.5)
        sys.exit(3)
    with open(sys.argv[2] + ".%s" % os.environ["RANK"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
