"""Open a local HTML file in headless Chromium and report what the page did.

    page = open_page(Path("report.html"), screenshot=tmp_path / "report.png")
    page.title, page.text, page.dom, page.console_errors, page.external_requests, page.values

Chromium (Debian's `chromium`, /usr/bin/chromium; CI installs it) is driven through the Chrome
DevTools protocol over a pipe (`--remote-debugging-pipe`: JSON messages separated by NUL bytes on
file descriptors 3 and 4), so no extra package, driver or browser download is needed. The page is
loaded, given a moment for late handlers (image `onerror`, timers) to run, and then read back:
its title and DOM as they are *after* any script ran, its visible text, console errors and
exceptions, every URL it requested, and those that would leave the machine (not `data:` or
`file:`).

`find_chromium()` says where the browser is; tests skip when it is missing, except under
`CNNLAB_REQUIRE_DATA=1` (CI), where a missing browser fails them (see conftest.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-pipe",
)


@dataclass
class Page:
    url: str
    title: str  # document.title after load and late handlers
    dom: str  # document.documentElement.outerHTML, as the browser holds it
    text: str  # document.body.innerText: what a reader sees
    console_errors: list[str] = field(default_factory=list)  # console.error, exceptions, logs
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    values: dict[str, object] = field(default_factory=dict)  # open_page(evaluate=...) results

    @property
    def external_requests(self) -> list[str]:
        """Requests that left the machine: anything but data: URIs and local files."""
        return [u for u in self.requests if not u.startswith(("data:", "file:"))]


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    """The DevTools protocol over Chromium's debugging pipe."""

    def __init__(self, executable: str, user_data_dir: str):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child: Chromium reads fd 3 and writes fd 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_fds,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [],
                                        max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the debugging pipe (did it crash?)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))

    def drain(self, seconds: float) -> None:
        """Collect events for `seconds` (late handlers, timers)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._read(deadline))
            except TimeoutError:
                return

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone: wait/kill below
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = p["exceptionDetails"]
            out.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(p["entry"].get("text", ""))
    return out


def open_page(path: Path, screenshot: Path | None = None, settle: float = 0.3,
              evaluate: dict[str, str] | None = None, timeout: float = 60.0) -> Page:
    """Load `path` (a local HTML file) in headless Chromium; see the module docstring.

    `evaluate` maps names to JavaScript expressions run after load; their JSON values land in
    `page.values`. `screenshot` saves a PNG of the full page.
    """
    executable = find_chromium()
    if executable is None:
        raise FileNotFoundError("no Chromium found (apt-get install -y chromium)")
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="cnnlab-chromium-") as profile:
        pipe = _Pipe(executable, profile)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget",
                                {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Network", "Runtime", "Log"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.events.clear()
            pipe.call("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout)
            pipe.drain(settle)

            def js(expression: str):
                result = pipe.call("Runtime.evaluate",
                                   {"expression": expression, "returnByValue": True},
                                   session=session)
                if "exceptionDetails" in result:
                    raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
                return result["result"].get("value")

            page = Page(
                url=url,
                title=js("document.title"),
                dom=js("document.documentElement.outerHTML"),
                text=js("document.body ? document.body.innerText : ''"),
            )
            page.values = {name: js(expr) for name, expr in (evaluate or {}).items()}
            if screenshot is not None:
                shot = pipe.call("Page.captureScreenshot",
                                 {"format": "png", "captureBeyondViewport": True},
                                 session=session)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            page.console_errors = _errors(pipe.events)
            page.requests = [e["params"]["request"]["url"] for e in pipe.events
                             if e.get("method") == "Network.requestWillBeSent"]
            return page
        finally:
            pipe.close()
