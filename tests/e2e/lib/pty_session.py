"""Drives an interactive program through a pseudo-terminal, as a person at a terminal would:
keystrokes go in (Ctrl-C included, which the terminal turns into SIGINT), the screen text comes
out. Standard library only (pty, select), so CI needs nothing extra."""

import os
import pty
import re
import select
import signal
import time


class PtySession:
    def __init__(self, argv, timeout=60.0):
        self.timeout = timeout
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvp(argv[0], argv)
        self.buffer = ""  # everything the program printed
        self.cursor = 0   # expect() searches from here

    def send(self, text):
        os.write(self.fd, text.encode())

    def _read(self, wait):
        ready, _, _ = select.select([self.fd], [], [], wait)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # the program exited and the pty closed
            return None
        if not data:
            return None
        self.buffer += data.decode("utf-8", errors="replace")
        return True

    def expect(self, pattern, timeout=None):
        """Waits for the regex to appear after the previous match; returns the match."""
        deadline = time.monotonic() + (timeout or self.timeout)
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buffer, self.cursor)
            if m:
                self.cursor = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; screen so far:\n{self.buffer[-2000:]}")
            if self._read(min(left, 0.2)) is None and not rx.search(self.buffer, self.cursor):
                raise AssertionError(f"the program ended before {pattern!r}; screen:\n{self.buffer[-2000:]}")

    def wait_for_more(self, timeout=None):
        """Waits until the program prints anything past the previous match."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buffer) <= self.cursor:
            if time.monotonic() > deadline or self._read(0.05) is None:
                raise AssertionError("no output")

    def alive(self):
        pid, _ = os.waitpid(self.pid, os.WNOHANG)
        return pid == 0

    def wait_exit(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            self._read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the program did not exit")
