"""Shared measurement helpers of the benchmarks: statistics, the machine, process memory and CPU, timed HTTP, results files."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "benchmarks" / "out"

# tests/tb_server.py starts and stops a real `tensorboard` on a free port;
# the benchmarks use the very same code as the end-to-end tests.
sys.path.insert(0, str(REPO / "tests"))
import tb_server  # noqa: F401 - the scripts use it as common.tb_server

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_KIB = 1024
HTTP_TIMEOUT_S = 600  # a /health of 50 big runs takes long on a busy machine


def median(values) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def percentile(values, q: float) -> float:
    """The q-th percentile (linear interpolation, numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def parse_int_list(text: str) -> list[int]:
    """Parses `1,10,50` into [1, 10, 50]; an empty string is []."""
    return [int(part) for part in text.split(",") if part.strip()]


def machine(module: str, argv: list[str] | None) -> dict:
    """The machine and software a result was measured on, and the command (`python -m module argv...`)."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    versions = {}
    for package in ("tensorflow", "keras", "tensorboard", "numpy"):
        try:
            versions[package] = __import__(package).__version__
        except Exception:
            versions[package] = None
    try:
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split("\n")
    except OSError:
        dirty = []
    return {
        "git_modified": [line[3:] for line in dirty if line.strip()],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "command": " ".join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)]),
    }


# ------------------------------------------------------------ processes


def process_tree(root_pid: int) -> list[int]:
    """Returns `root_pid` and all its living descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, pending = [], [root_pid]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in pathlib.Path("/proc/%d/status" % pid).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_name(pid: int) -> str:
    try:
        return pathlib.Path("/proc/%d/comm" % pid).read_text().strip()
    except OSError:
        return "?"


def peak_rss_mib(pids) -> dict[int, float]:
    """Peak resident memory (VmHWM) of each process, MiB."""
    return {pid: _status_kib(pid, "VmHWM") / _KIB for pid in pids}


def rss_mib(pids) -> float:
    """Current resident memory of the processes together, MiB."""
    return sum(_status_kib(pid, "VmRSS") for pid in pids) / _KIB


def cpu_seconds(pids) -> float:
    """User + system CPU time the processes used so far, seconds."""
    total = 0
    for pid in pids:
        try:
            stat = pathlib.Path("/proc/%d/stat" % pid).read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLOCK_TICKS_PER_S


# ------------------------------------------------------------ HTTP


def timed_request(url: str, form: dict | None = None, timeout: float = HTTP_TIMEOUT_S) -> tuple[float, int, int]:
    """GETs `url` (POSTs `form` when given) as a browser would (gzip accepted).

    Returns:
      (seconds until the whole body arrived, HTTP status, body bytes on the wire).
    """
    data = urllib.parse.urlencode(form, doseq=True).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, headers={"Accept-Encoding": "gzip"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        body = error.read()
        status = error.code
    except (OSError, http.client.HTTPException):
        # A timeout or a dropped connection: reported as status 0.
        return time.perf_counter() - start, 0, 0
    return time.perf_counter() - start, status, len(body)


def latency_summary(samples_s) -> dict:
    """p50 / p95 / max of request times, milliseconds (None without samples)."""
    if not len(samples_s):
        return {"n": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    return {
        "n": len(samples_s),
        "p50_ms": round(percentile(samples_s, 50) * 1e3, 1),
        "p95_ms": round(percentile(samples_s, 95) * 1e3, 1),
        "max_ms": round(max(samples_s) * 1e3, 1),
    }


# ------------------------------------------------------------ results


def results_path(name: str, out_dir: pathlib.Path = OUT_DIR) -> pathlib.Path:
    """Returns `out_dir/<name>-<UTC time>.json` (the folder is created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return out_dir / ("%s-%s.json" % (name, stamp))


def write_results(
    name: str, results: dict, out_dir: pathlib.Path = OUT_DIR, path: pathlib.Path | None = None
) -> pathlib.Path:
    """Writes `results` as JSON to `path` (default: a new `results_path`) and returns the path.

    Notes the load average at the end in `results["machine"]` first.
    """
    results["machine"]["load_average_end"] = list(os.getloadavg())
    path = path or results_path(name, out_dir)
    path.write_text(json.dumps(results, indent=1, sort_keys=True))
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Prints `rows` as a Markdown table of `columns` (missing cells are blank)."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(_cell(row.get(column)) for column in columns) + " |")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "%.3g" % value if abs(value) < 100 else "%.0f" % value
    return str(value)
