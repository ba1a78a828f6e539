"""The verifier: runs a task's (trusted) test code and decides the verdict (stdlib only).

One verifier process per pool slot runs on the host side of the sandbox, started by
`score_jax.sandbox.judge` as `python -I -B -c BOOTSTRAP` (isolated mode: no PYTHON*
environment variables, so no host `-O` / PYTHONOPTIMIZE reaches it; tests are compiled here
with `optimize=0`, so their asserts always run). It never runs model-written code. For each
job the host sends (over the control socket on stdin) the test source, the names the tests
take from the program, the stdlib modules they use unimported, and one end of a socket
whose other end the sandboxed program's process U holds (`score_jax.sandbox.driver`).

A job: wait for U's "ready" message (the program ran to its end; it carries the values of
the requested names as plain data or handles), build a fresh namespace: pristine builtins
(a copy of this process's own, which untrusted code never touches), its own imports of the
stdlib modules, then the program's names, and run setup + tests in it. Setup code (MBPP's
test_setup_code, HumanEval's prompt helpers) is defined here: a program that rebinds
`abs`, `math.fabs`, `tuple` or a prompt helper changes only its own process.

A program name is a `Remote`: calling it (or reading / writing an attribute) sends the
request with encoded arguments to U, which answers with the encoded result (and the new
state of list / dict / set arguments, written back so in-place tests stay faithful), or
the nearest builtin exception class and message, raised here. Values are decoded by the
strict `score_jax.sandbox.codec`: plain data, or a Remote for anything else, which equals
only itself and has no truth value. U dying, sending garbage, raising SystemExit (or
another non-`Exception`) in a call: the job fails, even if the test catches the error.

The verdict (passed; reason; the failing test's traceback) goes back to the host on the
control socket; nothing U writes or exits with takes part in it.
"""

import builtins
import importlib
import linecache
import marshal
import resource
import socket
import struct
import traceback

TESTS_FILENAME = "tests.py"
_U32 = struct.Struct("<I")
_PRISTINE = dict(vars(builtins))
_CODE_CACHE: dict = {}
_MAX_TRACEBACK = 16384
codec = None  # the codec module's namespace (set by `main`)


class Abort(BaseException):
  """The program's process broke the protocol or died: the job fails (not catchable as
  Exception by test code)."""


class Conn:
  """One job's socket to U: framing, decoding with caps, requests."""

  def __init__(self, sock):
    self.sock = sock
    self.broken = ""
    self.encode = codec["Encoder"]()

  def fail(self, reason):
    self.broken = self.broken or reason
    raise Abort(self.broken)

  def _exactly(self, n):
    data = bytearray()
    while len(data) < n:
      try:
        chunk = self.sock.recv(min(n - len(data), 1 << 20))
      except OSError as e:
        chunk = b""
        self.fail(f"lost the connection to the program's process ({e})")
      if not chunk:
        self.fail("the program's process ended or closed its socket")
      data += chunk
    return bytes(data)

  def recv(self):
    size = _U32.unpack(self._exactly(4))[0]
    if size > codec["MAX_BYTES"] + 64:
      self.fail(f"a reply of {size} bytes (over the cap)")
    try:
      message = codec["decode"](self._exactly(size), self.remote)
    except codec["DecodeError"] as e:
      self.fail(f"an undecodable reply ({e})")
    except MemoryError:
      self.fail("a reply too large to decode")
    if not (type(message) is tuple and len(message) == 3 and type(message[0]) is str):
      self.fail("a malformed reply")
    return message

  def remote(self, number):
    return Remote(self, number)

  def _handle(self, obj):
    if type(obj) is Remote and object.__getattribute__(obj, "_conn") is self:
      return object.__getattribute__(obj, "_id")
    raise TypeError(f"cannot pass a {type(obj).__name__} to the program (not plain data)")

  def request(self, message, args=(), kwargs=None):
    if self.broken:
      raise Abort(self.broken)
    try:
      data = self.encode(message, self._handle)
    except codec["EncodeError"] as e:
      raise TypeError(f"cannot pass the arguments to the program: {e}") from None
    try:
      self.sock.sendall(_U32.pack(len(data)) + data)
    except OSError as e:
      self.fail(f"lost the connection to the program's process ({e})")
    kind, value, post = self.recv()
    if kind == "raise":
      if not (type(value) is tuple and len(value) == 2
              and all(type(v) is str for v in value)):
        self.fail("a malformed exception reply")
      name, text = value[0][:100], value[1][:codec["MAX_TEXT"]]
      cls = getattr(builtins, name, None)
      if not (isinstance(cls, type) and issubclass(cls, Exception)):
        self.fail(f"the program raised {name:.40} inside a call")
      raise codec["builtin_exception"](name, text)
    if kind != "return":
      self.fail(f"an unexpected reply {kind!r:.40}")
    if post is not None:
      _write_back(args, kwargs or {}, post)
    return value


def _write_back(args, kwargs, post):
  """Copies the program's post-call state of list / dict / set arguments into ours."""
  if not (type(post) is tuple and len(post) == 2 and type(post[0]) is tuple
          and type(post[1]) is dict and len(post[0]) == len(args)):
    return
  pairs = list(zip(args, post[0])) + [(v, post[1].get(k)) for k, v in kwargs.items()]
  for old, new in pairs:
    t = type(old)
    if t is not type(new) or old is new:
      continue
    if t is list or t is bytearray:
      old[:] = new
    elif t is dict or t is set:
      old.clear()
      old.update(new)


class Remote:
  """An object of the program, living in its process: call it, read / set attributes."""

  __slots__ = ("_conn", "_id")

  def __init__(self, conn, number):
    object.__setattr__(self, "_conn", conn)
    object.__setattr__(self, "_id", number)

  def __call__(self, *args, **kwargs):
    conn = object.__getattribute__(self, "_conn")
    number = object.__getattribute__(self, "_id")
    return conn.request(("call", number, args, kwargs), args, kwargs)

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    conn = object.__getattribute__(self, "_conn")
    return conn.request(("getattr", object.__getattribute__(self, "_id"), name, None))

  def __setattr__(self, name, value):
    conn = object.__getattribute__(self, "_conn")
    conn.request(("setattr", object.__getattribute__(self, "_id"), name, value))

  def __eq__(self, other):
    return self is other

  def __ne__(self, other):
    return self is not other

  __hash__ = object.__hash__

  def __bool__(self):
    raise TypeError("an object of the program (not plain data) has no truth value here")

  def __repr__(self):
    return f"<object #{object.__getattribute__(self, '_id')} of the program>"


def _compiled(source):
  code = _CODE_CACHE.get(source)
  if code is None:
    if len(_CODE_CACHE) > 4096:
      _CODE_CACHE.clear()
    code = compile(source, TESTS_FILENAME, "exec", dont_inherit=True, optimize=0)
    _CODE_CACHE[source] = code
  return code


def _failure(exc, source):
  """(one-line reason, traceback of the test code's frames only)."""
  linecache.cache[TESTS_FILENAME] = (len(source), None, source.splitlines(True),
                                     TESTS_FILENAME)
  frames = [f for f in traceback.extract_tb(exc.__traceback__)
            if f.filename == TESTS_FILENAME]
  lines = traceback.format_exception_only(type(exc), exc)
  text = "".join(["Traceback (most recent call last):\n",
                  *traceback.format_list(frames), *lines])
  where = f" ({TESTS_FILENAME} line {frames[-1].lineno})" if frames else ""
  return f"{lines[-1].strip()[:200]}{where}", text[-_MAX_TRACEBACK:]


def run_job(job, sock):
  """Runs one job's tests against the program behind `sock`; returns the verdict dict."""
  conn = Conn(sock)
  try:
    kind, found, _ = conn.recv()
    if kind != "ready" or type(found) is not dict:
      conn.fail("a malformed ready message")
  except Abort:
    return {"passed": False, "ready": False, "reason": "the program did not run to its end",
            "traceback": ""}
  source = job["source"]
  namespace = {"__builtins__": dict(_PRISTINE), "__name__": "__main__"}
  try:
    for name in job["modules"]:
      namespace[name] = importlib.import_module(name)
    for name in job["names"]:
      if name in found:
        namespace[name] = found[name]
    exec(_compiled(source), namespace)  # pylint: disable=exec-used
  except Abort:
    pass
  except BaseException as exc:  # pylint: disable=broad-except
    if not conn.broken:
      reason, text = _failure(exc, source)
      return {"passed": False, "ready": True, "reason": reason, "traceback": text}
  if conn.broken:
    return {"passed": False, "ready": True,
            "reason": f"the program's process failed: {conn.broken}", "traceback": ""}
  return {"passed": True, "ready": True, "reason": "", "traceback": ""}


def main():
  """Serves jobs from the control socket on fd 0 until it closes."""
  global codec  # pylint: disable=global-statement
  ctrl = socket.socket(fileno=0)
  codec_code, memory = marshal.loads(_read_frame(ctrl))
  codec = {"__name__": "score_jax_codec"}
  exec(codec_code, codec)  # pylint: disable=exec-used
  resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
  while True:
    try:
      head, fds, _, _ = socket.recv_fds(ctrl, 4, 1)
    except OSError:
      return
    if not head:
      return
    head += _exactly(ctrl, 4 - len(head))
    job = marshal.loads(_exactly(ctrl, _U32.unpack(head)[0]))
    if len(fds) != 1:
      raise SystemExit("a job without its socket")
    sock = socket.socket(fileno=fds[0])
    try:
      verdict = run_job(job, sock)
    except MemoryError:
      verdict = {"passed": False, "ready": True, "reason": "out of memory in the verifier",
                 "traceback": ""}
    finally:
      sock.close()
    verdict["id"] = job["id"]
    data = marshal.dumps(verdict)
    ctrl.sendall(_U32.pack(len(data)) + data)


def _exactly(sock, n):
  data = b""
  while len(data) < n:
    chunk = sock.recv(n - len(data))
    if not chunk:
      raise SystemExit(0)
    data += chunk
  return data


def _read_frame(sock):
  return _exactly(sock, _U32.unpack(_exactly(sock, 4))[0])


if __name__ == "__main__":
  main()
