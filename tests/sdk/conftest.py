"""Fixtures that run the real binaries: mock-anthropic as the upstream and toklock in front
of it, both on 127.0.0.1 with ports picked by the OS."""

import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"


def binary(name: str) -> str:
    path = TARGET / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build -p toklock -p mock-anthropic` first")
    return str(path)


class Process:
    """A child process whose output is drained on a thread, so it can never block on a full
    pipe, and whose lines can be waited for."""

    def __init__(self, args, stream: str):
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
            stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL,
            text=True,
        )
        self.lines = []
        self.cond = threading.Condition()
        pipe = self.proc.stdout if stream == "stdout" else self.proc.stderr
        threading.Thread(target=self._drain, args=(pipe,), daemon=True).start()

    def _drain(self, pipe):
        for line in pipe:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        regex = re.compile(pattern)
        with self.cond:
            def found():
                return next((m for m in map(regex.search, self.lines) if m), None)

            self.cond.wait_for(lambda: found() or self.proc.poll() is not None, timeout)
            match = found()
        if not match:
            raise AssertionError(f"no line matching {pattern!r}; output so far: {self.lines}")
        return match

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_mock(*flags: str) -> tuple[Process, str]:
    mock = Process([binary("mock-anthropic"), "--port", "0", *flags], "stdout")
    url = mock.wait_for(r"listening on (http://\S+)").group(1)
    return mock, url


def start_toklock(upstream: str, *flags: str) -> tuple[Process, str]:
    proxy = Process(
        [binary("toklock"), "--port", "0", "--upstream", upstream, "--log", "warn", *flags],
        "stderr",
    )
    url = proxy.wait_for(r"export ANTHROPIC_BASE_URL=(\S+)").group(1)
    return proxy, url


@pytest.fixture(scope="session")
def mock_url():
    mock, url = start_mock()
    yield url
    mock.stop()


@pytest.fixture(scope="session")
def proxy_url(mock_url):
    proxy, url = start_toklock(mock_url)
    yield url
    proxy.stop()
