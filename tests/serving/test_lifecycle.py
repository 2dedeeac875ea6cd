"""`qvg-serve serve` as an operator runs it: startup errors before Ray, SIGTERM drains and exits
0 leaving no process behind, a second server on a used port exits naming the port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml
from conftest import free_port, wait_healthy

from qvg_serve.serve.frames import parse_sse

PROMPT = "a red star moving right on black"  # words the tiny model knows

DRAIN_S = 60  # generous: the 36-frame stream must finish inside it on a loaded CI box
ARGS = {
    "engine": {"model": "tiny", "device": "cpu", "kv_cache_memory_bytes": 16 << 20},
    "server": {"auth": False, "drain_timeout_s": DRAIN_S},
    "deployment": {"ray_actor_options": {"num_cpus": 0.5}},
}


def serve_cmd(config, port: int) -> list[str]:
    return [sys.executable, "-m", "qvg_serve.cli", "serve", "--config", str(config), "--port",
            str(port)]  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QVG_API_KEYS")}
    return {**env, "RAY_AUTH_MODE": "disabled", **extra}


def proc_table() -> dict[int, tuple[int, int, str, int]]:
    """pid -> (ppid, session id, state, start time) of every process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), int(fields[3]), fields[0], int(fields[19]))
    return table


def descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every process below `pid` now."""
    table, out, todo = proc_table(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _, _, start) in table.items():
            if ppid == parent and child not in out:
                out[child] = start
                todo.append(child)
    return out


def left_over(tree: dict[int, int], session: int) -> list[int]:
    """Processes of `tree` (same pid, same start time) or of `session` still alive."""
    table = proc_table()
    alive = {p for p, (_, _, state, _) in table.items() if state not in "ZX"}
    mine = {p for p, start in tree.items() if p in alive and table[p][3] == start}
    return sorted(mine | {p for p in alive if table[p][1] == session})


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(ARGS))
    return path


def test_auth_on_without_keys_fails_before_ray_naming_the_variable(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump({**ARGS, "server": {"auth": True}}))
    done = subprocess.run(serve_cmd(path, free_port()), capture_output=True, text=True,
                          timeout=60, env=clean_env())  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "$QVG_API_KEYS" in done.stderr and "server.auth = false" in done.stderr
    assert "Started a local Ray instance" not in done.stderr  # it failed before Ray


def test_sigterm_drains_exits_0_and_leaves_no_process(config, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w+")  # a file, not a pipe: Ray logs a lot
    proc = subprocess.Popen(serve_cmd(config, port), env=clean_env(), start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_healthy(base, timeout=150)
        second = subprocess.run(serve_cmd(config, port), capture_output=True, text=True,
                                timeout=60, env=clean_env())  # fmt: skip
        assert second.returncode == 2 and f"port {port}" in second.stderr, second.stderr[-2000:]
        assert requests.get(f"{base}/v1/health", timeout=10).status_code == 200  # still serving

        sid = requests.post(f"{base}/v1/streams", json={"prompt": PROMPT, "frames": 36},
                            timeout=30).json()["id"]  # fmt: skip
        viewer = requests.get(f"{base}/v1/streams/{sid}/frames", params={"format": "sse"},
                              stream=True, timeout=120)  # fmt: skip
        lines = viewer.iter_lines(decode_unicode=True)
        first = [next(lines)]  # "retry: ..." (delivery.py), then "id: 0", "event: frame", ...
        while first[-1] != "event: frame":
            first.append(next(lines))
        first.append(next(lines))  # its "data: ..." line: the viewer is open
        events: list = []
        reader = threading.Thread(target=lambda: events.extend(parse_sse([*first, *lines])))
        reader.start()
        tree = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        refused = wait_refused(base)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "draining" and refused.headers["Retry-After"]
        rc = proc.wait(timeout=DRAIN_S + 60)
        reader.join(timeout=10)
        assert rc == 0, (tmp_path / "serve.log").read_text()[-3000:]
        # the drain waited for the stream and its viewer: every frame, then the end event
        assert events and events[-1] == ("end", {"reason": "completed", "frames": 36}), events[-1:]
        assert [d["index"] for e, d in events if e == "frame"] == list(range(36))
        end = time.time() + 10
        while left_over(tree, proc.pid) and time.time() < end:
            time.sleep(0.2)
        assert left_over(tree, proc.pid) == [], proc_table()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_refused(base: str, timeout: float = 15) -> requests.Response:
    """The first create answered other than 201 after the signal (tiny creates until then)."""
    end = time.time() + timeout
    while time.time() < end:
        r = requests.post(f"{base}/v1/streams", json={"prompt": PROMPT, "frames": 3},
                          timeout=30)  # fmt: skip
        if r.status_code != 201:
            return r
        time.sleep(0.05)
    raise TimeoutError("creates were still admitted after SIGTERM")
