"""Profile the daemon under the write benchmark's load with py-spy.

    python -m bench.profile stream --seconds 6 --output /tmp/profile

starts the daemon and the load generator as ``python -m bench`` does, runs
``py-spy record`` on the daemon while the load runs, and writes
``MODE.svg`` (a flame graph) and ``MODE-gil.txt`` (collapsed stacks of the
thread holding the interpreter lock) into the output folder. It prints how
much of the time the lock was held, by which thread, and the functions
that held it most. py-spy is not a dependency of editstore: install it
with ``pip install py-spy``; it needs permission to read the daemon's
memory (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading

from bench import servers
from bench.load import LoadConfig, run_load
from bench.writes import create_sessions

SAMPLES_PER_SECOND = 200
RECORD_DELAY = 2.0
# py-spy names a frame "function (path/to/file.py:line)".
LINE_NUMBER = re.compile(r":\d+\)$")


def summarize(collapsed: pathlib.Path, seconds: float, top: int) -> str:
    """Return the share of time each thread and function held the lock."""
    threads: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        threads[frames[0]] += count
        for frame in {LINE_NUMBER.sub(")", frame) for frame in frames[1:]}:
            functions[frame] += count
    possible = seconds * SAMPLES_PER_SECOND
    lines = [f"lock held {sum(threads.values()) / possible:.0%} of the time"]
    for thread, count in threads.most_common():
        lines.append(f"  {count / possible:6.1%}  {thread}")
    lines.append("functions on the stack while the lock was held:")
    for function, count in functions.most_common(top):
        lines.append(f"  {count / possible:6.1%}  {function}")
    return "\n".join(lines)


def thread_cpu(pid: int) -> dict[str, float]:
    """Return the CPU seconds each thread of a process has used.

    Each thread is named by its kernel name and id, ``python (1234)``; the
    thread ids match the ones py-spy prints.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        # utime and stime are fields 14 and 15 of stat, 12 and 13 after ")".
        used[f"{name} ({task.name})"] = (int(fields[11]) + int(fields[12])) / ticks
    return dict(used)


def py_spy(
    pid: int, seconds: float, output: pathlib.Path, *extra: str
) -> subprocess.Popen[bytes]:
    executable = shutil.which("py-spy") or str(
        pathlib.Path(sys.executable).parent / "py-spy"
    )
    return subprocess.Popen(
        [
            executable,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(SAMPLES_PER_SECOND),
            "--threads",
            "--output",
            str(output),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("unary", "stream"))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("."))
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    args = parser.parse_args()
    if (
        not shutil.which("py-spy")
        and not (pathlib.Path(sys.executable).parent / "py-spy").exists()
    ):
        raise SystemExit("py-spy not found; install it with: pip install py-spy")
    args.output.mkdir(parents=True, exist_ok=True)
    flame = args.output / f"{args.mode}.svg"
    collapsed = args.output / f"{args.mode}-gil.txt"
    with tempfile.TemporaryDirectory(prefix="editstore-profile-") as temporary:
        workdir = pathlib.Path(temporary)
        daemon = servers.daemon(workdir / "profile.db", workdir / "daemon.log")
        with servers.running(daemon):
            sessions = create_sessions(daemon.address, 64)
            cpu_before = thread_cpu(daemon.pid)
            recorders: list[subprocess.Popen[bytes]] = []

            def record() -> None:
                # Two recorders at once: a flame graph of all threads, and
                # the stacks of whichever thread holds the interpreter lock.
                recorders.append(py_spy(daemon.pid, args.seconds, flame))
                recorders.append(
                    py_spy(
                        daemon.pid, args.seconds, collapsed, "--gil", "--format", "raw"
                    )
                )

            # The recording starts once the load generators run, and the load
            # goes on a little after it ends.
            starter = threading.Timer(RECORD_DELAY, record)
            starter.start()
            result = run_load(
                daemon.address,
                sessions,
                LoadConfig(args.mode),
                args.seconds + RECORD_DELAY,
                server_pid=daemon.pid,
            )
            starter.join()
            cpu_after = thread_cpu(daemon.pid)
            for recorder in recorders:
                _, errors = recorder.communicate(timeout=args.seconds + 60)
                if recorder.returncode != 0:
                    raise SystemExit(
                        f"py-spy failed: {errors.decode(errors='replace')}"
                    )
    print(
        f"{args.mode}: {result.rate:,.0f} updates/s, server {result.server_cpu:.2f} "
        f"cores, clients {result.client_cpu:.2f} cores, {result.errors} errors"
    )
    print(f"{result.rate and 1e3 / result.rate:.2f} ms of wall time per update")
    print("CPU of each daemon thread per update, over the whole load:")
    updates = result.rate * (args.seconds + RECORD_DELAY)
    for name, seconds in sorted(cpu_after.items(), key=lambda item: -item[1]):
        spent = seconds - cpu_before.get(name, 0.0)
        if spent > 0:
            print(f"  {spent / updates * 1e6:7.1f} us  {name}")
    print(summarize(collapsed, args.seconds, args.top))
    print(f"flame graph: {flame}")


if __name__ == "__main__":
    main()
