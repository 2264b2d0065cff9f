"""server.StopDeadline: a process asked to stop ends, even when something in it hangs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from authority.server import StopDeadline


class _Exits:
    """Records the exit a deadline asks for, instead of ending the test process."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.done = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.done.set()


def test_an_overrun_stop_says_why_dumps_every_thread_and_exits_1(tmp_path: Path) -> None:
    exits = _Exits()
    stuck = threading.Event()
    hanging = threading.Thread(target=stuck.wait, name="hanging-in-stop", daemon=True)
    hanging.start()
    try:
        with (tmp_path / "stderr").open("w+") as stream:
            deadline = StopDeadline(0.05, stream=stream, exit=exits)
            deadline.arm()
            assert exits.done.wait(10)
            stream.seek(0)
            written = stream.read()
    finally:
        stuck.set()

    assert exits.codes == [1]
    first, rest = written.split("\n", 1)
    line = json.loads(first)
    assert line["level"] == "error" and line["logger"] == "authority.server"
    assert "stopping took longer than 0.05 s; exiting" in line["msg"]
    # faulthandler's dump: every thread, the one stuck in stop among them.
    assert "Current thread" in rest and rest.count("Thread 0x") >= 1
    assert "wait" in rest


def test_a_stop_that_ends_in_time_leaves_it_unfired(tmp_path: Path) -> None:
    exits = _Exits()
    with (tmp_path / "stderr").open("w+") as stream:
        deadline = StopDeadline(0.2, stream=stream, exit=exits)
        deadline.arm()
        deadline.cancel()
        assert not exits.done.wait(0.5)  # past when it was due
        stream.seek(0)
        assert stream.read() == ""
    assert exits.codes == []
