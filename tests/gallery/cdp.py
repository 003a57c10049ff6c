"""Headless Chromium driven over the DevTools protocol through `--remote-debugging-pipe` (standard library only).

Chromium reads NUL-terminated JSON commands from file descriptor 3 and writes responses and events to fd 4
(the transport Puppeteer and Playwright use); no websocket client and no open port are needed. One page
target, attached in flat session mode. Used by tests/gallery/test_browser.py and bench/gallery.py.

    with Browser() as br:                        # raises BrowserMissing when no Chromium is installed
      br.open("file:///.../index.html", width=1280, height=900)
      png = br.screenshot()                      # PNG bytes of the viewport
      br.click("button.cls[data-cat='1']")       # real mouse events at the element's centre
      n = br.eval("document.querySelectorAll('figure:not([hidden])').length")
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--hide-scrollbars", "--mute-audio",
         "--disable-dev-shm-usage", "--allow-file-access-from-files", "--force-color-profile=srgb",
         "--font-render-hinting=none")


class BrowserMissing(RuntimeError):
  """No Chromium executable was found."""


class BrowserError(RuntimeError):
  """The browser failed, answered with an error, or did not answer in time."""


def find_chromium() -> str | None:
  """Path of a Chromium/Chrome executable ($ZIPJAX_CHROMIUM first), or None."""
  env = os.environ.get("ZIPJAX_CHROMIUM")
  if env:
    return env if os.access(env, os.X_OK) else None
  for name in CANDIDATES:
    p = shutil.which(name)
    if p:
      return p
  return None


class Browser:
  """A headless Chromium process and one page.

  Attributes:
    exe: the executable.
    proc: the Popen object.
    session: the page's DevTools session id.
    timeout: seconds to wait for an answer.
  """

  def __init__(self, exe: str | None = None, timeout: float = 30.0):
    self.exe = exe or find_chromium()
    if not self.exe:
      raise BrowserMissing("no Chromium found (install Debian's `chromium` package, or set ZIPJAX_CHROMIUM)")
    self.timeout = timeout
    self._id = 0
    self._events: list = []
    self._buf = b""
    self.session = None
    self._profile = tempfile.mkdtemp(prefix="zipjax-chromium-")
    to_child_r, self._w = os.pipe()
    self._r, from_child_w = os.pipe()

    def child_fds():  # runs in the child before exec: the protocol's fds must be exactly 3 and 4
      a, b = os.dup(to_child_r), os.dup(from_child_w)
      os.dup2(a, 3)
      os.dup2(b, 4)

    self.proc = subprocess.Popen(  # pylint: disable=consider-using-with,subprocess-popen-preexec-fn
        [self.exe, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile}", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=(3, 4), preexec_fn=child_fds)
    os.close(to_child_r)
    os.close(from_child_w)
    try:
      target = self.call("Target.createTarget", url="about:blank")["targetId"]
      self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
      self.call("Page.enable")
      self.call("Runtime.enable")
    except BaseException:
      self.close()
      raise

  # ------------------------------------------------------------------------------------------ protocol
  def _send(self, method: str, params: dict, session: str | None) -> int:
    self._id += 1
    msg = {"id": self._id, "method": method, "params": params}
    if session:
      msg["sessionId"] = session
    data = json.dumps(msg).encode("utf-8") + b"\0"
    while data:
      data = data[os.write(self._w, data):]
    return self._id

  def _read(self, deadline: float) -> dict:
    while b"\0" not in self._buf:
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([self._r], [], [], left)[0]:
        raise BrowserError("the browser did not answer in time")
      chunk = os.read(self._r, 1 << 20)
      if not chunk:
        raise BrowserError(f"the browser closed the pipe (exit code {self.proc.poll()})")
      self._buf += chunk
    msg, _, self._buf = self._buf.partition(b"\0")
    return json.loads(msg)

  def call(self, method: str, browser_level: bool = False, **params):
    """Sends a command (to the page session unless `browser_level` or no session yet) and returns its result."""
    session = None if browser_level or method.startswith("Target.") else self.session
    mid = self._send(method, params, session)
    deadline = time.monotonic() + self.timeout
    while True:
      msg = self._read(deadline)
      if msg.get("id") == mid:
        if "error" in msg:
          raise BrowserError(f"{method}: {msg['error']}")
        return msg.get("result", {})
      if "method" in msg:
        self._events.append(msg)

  def wait_event(self, name: str, timeout: float | None = None) -> dict:
    for i, ev in enumerate(self._events):
      if ev["method"] == name:
        return self._events.pop(i)
    deadline = time.monotonic() + (timeout or self.timeout)
    while True:
      msg = self._read(deadline)
      if msg.get("method") == name:
        return msg
      if "method" in msg:
        self._events.append(msg)

  # ------------------------------------------------------------------------------------------ page
  def open(self, url: str, width: int = 1280, height: int = 900, ready: str | None = "document.body && "
           "document.body.dataset.ready === '1'") -> None:
    """Navigates to `url` with a `width` x `height` viewport; waits for the load event and `ready` (JS)."""
    self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
              mobile=False)
    self._events.clear()
    res = self.call("Page.navigate", url=url)
    if res.get("errorText"):
      raise BrowserError(f"cannot open {url}: {res['errorText']}")
    self.wait_event("Page.loadEventFired")
    if ready:
      self.wait_for(ready)
    self.wait_for_images()

  def eval(self, expression: str, await_promise: bool = False):
    """Value of a JavaScript expression (JSON-serialisable)."""
    res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
    if "exceptionDetails" in res:
      raise BrowserError(f"JavaScript error in {expression!r}: {res['exceptionDetails']}")
    return res["result"].get("value")

  def wait_for(self, expression: str, timeout: float | None = None) -> None:
    deadline = time.monotonic() + (timeout or self.timeout)
    while not self.eval(f"!!({expression})"):
      if time.monotonic() > deadline:
        raise BrowserError(f"timed out waiting for {expression!r}")
      time.sleep(0.05)

  def wait_for_images(self, timeout_ms: int = 10000) -> None:
    """Waits until every <img> shown in the viewport has loaded or failed (lazy images further down the page
    are not requested, so they are not waited for)."""
    self.eval("Promise.race([new Promise(r => setTimeout(r, %d)), Promise.all(Array.from(document.images)"
              ".filter(i => { const b = i.getBoundingClientRect(); return i.offsetParent !== null && !i.complete"
              " && b.bottom > 0 && b.top < innerHeight && b.right > 0 && b.left < innerWidth; })"
              ".map(i => new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })))])"
              % timeout_ms, await_promise=True)

  def rect(self, selector: str) -> dict:
    """The element's bounding box in CSS px of the viewport: {x, y, width, height}."""
    r = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null; "
                  "const r = e.getBoundingClientRect(); "
                  "return {x: r.x, y: r.y, width: r.width, height: r.height}; })()")
    if r is None:
      raise BrowserError(f"no element matches {selector!r}")
    return r

  def click(self, selector: str) -> None:
    """A real left click (mouse pressed and released) at the centre of the element, scrolled into view."""
    self.eval(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})")
    r = self.rect(selector)
    x, y = r["x"] + r["width"] / 2, r["y"] + r["height"] / 2
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
      self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if kind != "mouseMoved" else "none",
                clickCount=1 if kind != "mouseMoved" else 0)
    self.wait_for_images()

  def scroll_to(self, x: float = 0, y: float = 0) -> None:
    self.eval(f"window.scrollTo({x}, {y})")

  def screenshot(self) -> bytes:
    """PNG bytes of the viewport."""
    return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

  # ------------------------------------------------------------------------------------------ lifetime
  def close(self) -> None:
    try:
      if self.proc.poll() is None:
        try:
          self._send("Browser.close", {}, None)
          self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
          self.proc.kill()
          self.proc.wait(timeout=5)
    finally:
      for fd in (self._r, self._w):
        try:
          os.close(fd)
        except OSError:
          pass
      shutil.rmtree(self._profile, ignore_errors=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


__all__ = ["Browser", "BrowserError", "BrowserMissing", "find_chromium"]
