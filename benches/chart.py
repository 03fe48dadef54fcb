#!/usr/bin/env python3
"""Draw a comparison chart (PNG) from the rows the compare_*.sh scripts collect.

Usage: chart.py DATA OUT.png TITLE
DATA: one row per point, whitespace-separated: library ranks bytes time_us busbw_GBps
(the medians the script's table prints). Two panels, log-log against message size: busbw and
time; one line per library and rank count (colour: library, line style: rank count). busbw is
drawn from bytes and time (all-reduce: bytes / time x 2(n-1)/n), not from the tables' column,
whose two decimals flatten small messages to 0.
"""
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict

try:
    import matplotlib
except ImportError:
    # Installed on first use, into the user's site (PEP 668 systems need the override).
    env = dict(os.environ, PIP_BREAK_SYSTEM_PACKAGES="1")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--user", "matplotlib"],
                   env=env, check=True)
    import site
    import importlib

    importlib.reload(site)
    sys.path.insert(0, site.getusersitepackages())
    import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def machine():
    """One line naming the machine the figures come from."""
    model = platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"{os.cpu_count()} CPUs ({model}), {stamp}"


def main():
    data, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
    series = defaultdict(list)
    for line in open(data):
        f = line.split()
        if len(f) != 5:
            continue
        lib, ranks, size, t, bw = f[0], int(f[1]), int(f[2]), float(f[3]), float(f[4])
        series[(lib, ranks)].append((size, t, bw))
    libs = sorted({lib for lib, _ in series}, key=lambda s: (s != "oxccl", s))
    rank_counts = sorted({r for _, r in series})
    colours = dict(zip(libs, ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]))
    styles = dict(zip(rank_counts, ["-", "--", ":", "-."]))
    fig, (ax_bw, ax_t) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (lib, ranks), pts in sorted(series.items(), key=lambda kv: (libs.index(kv[0][0]), kv[0][1])):
        pts.sort()
        x = [p[0] for p in pts]
        label = f"{lib}, {ranks} ranks"
        kw = dict(color=colours[lib], linestyle=styles[ranks], marker="o", markersize=3, label=label)
        factor = 2 * (ranks - 1) / ranks
        bw = [(s, s / t * factor / 1e3) for s, t, _ in pts if t > 0]
        if bw:
            ax_bw.plot([s for s, _ in bw], [b for _, b in bw], **kw)
        ax_t.plot(x, [p[1] for p in pts], **kw)
    for ax, ylabel in ((ax_bw, "busbw (GB/s)"), (ax_t, "time per all-reduce (us)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle(f"{title}\n{machine()}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"chart: {out}")


if __name__ == "__main__":
    main()
