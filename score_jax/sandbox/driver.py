"""The program that runs *inside* the code sandbox (stdlib only; no score_jax imports).

`score_jax.sandbox` starts `python -I -S -B -X utf8 -c BOOTSTRAP JOB STATUS_FD` inside
bubblewrap, where JOB is a file holding `marshal.dumps((driver code, job))`: the bootstrap
execs this file's code object (compiled once on the host) as `__main__`, and this driver

1. reads the job dict (program, rlimits, sys.path additions; with tests, the codec's code,
   the fd of its socket to the verifier and the names the tests take from the program) and
   deletes the file;
2. lowers its rlimits (address space, CPU, file size, open files, processes; the sandbox runs
   in its own user namespace, so the process limit counts only the sandbox's processes);
3. writes one byte to STATUS_FD and closes it ("the sandbox started"; the host tells a
   sandbox that failed to start from a program that failed);
4. runs the program as `__main__` (an uncaught exception: traceback, exit status 1);
5. with tests (`run_tests`), serves the verifier (`score_jax.sandbox.verifier`) over the
   socket: it sends the values of the requested names, then answers calls, attribute reads
   and writes on them, with results encoded by `score_jax.sandbox.codec` (plain data, or a
   handle for any other object), and exits when the verifier closes the socket.

Nothing here decides a verdict: the tests run in the verifier, on the host side, which only
ever receives plain data from this process. A program that patches this driver, the codec,
builtins or the socket can only change the values it answers with, which it could have
returned anyway; one that exits, hangs or sends garbage fails its tests.
"""

import builtins
import marshal
import os
import resource
import sys

_os_exit = os._exit  # pylint: disable=protected-access
_type = type


def _set_limits(limits):
  for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))


def _flush():
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      pass


def _report(exc, sources):
  """Prints a traceback without the driver's own frame, then exits 1."""
  import linecache  # pylint: disable=import-outside-toplevel
  import traceback  # pylint: disable=import-outside-toplevel
  for filename, source in sources.items():
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
  _flush()
  try:
    traceback.print_exception(_type(exc), exc, exc.__traceback__.tb_next)
  except Exception:  # pylint: disable=broad-except
    pass
  _flush()
  _os_exit(1)


class _Forced:
  """Wraps a value that must go as a handle (it is too big, too deep or cyclic to encode)."""

  def __init__(self, value):
    self.value = value


class _Server:
  """Answers the verifier's requests on `fd` (built before the program runs).

  Everything it uses is bound here, before the program runs, so that an honest program that
  rebinds builtins (`any`, `len`, ...) is still served faithfully.
  """

  def __init__(self, fd, codec_code):
    # The codec gets a private copy of the builtins: rebinding `builtins.len` (say) later
    # does not change how it frames, encodes or decodes.
    codec = {"__name__": "score_jax_codec", "__builtins__": dict(vars(builtins))}
    exec(codec_code, codec)  # pylint: disable=exec-used
    self.encode, self.decode = codec["Encoder"](), codec["decode"]
    self.frame, self.info = codec["frame"], codec["exception_info"]
    self.names = codec["exception_names"]()
    self.fd, self.objects, self.ids = fd, [], {}
    self.read, self.write, self.len, self.min, self.id = os.read, os.write, len, min, id
    self.from_bytes, self.join, self.flush = int.from_bytes, b"".join, _flush
    self.getattr, self.setattr, self.type = getattr, setattr, _type
    self.mutable = (list, dict, set, bytearray)
    self.BaseException, self.Forced = BaseException, _Forced

  def handle(self, obj) -> int:
    if self.type(obj) is self.Forced:
      obj = obj.value
    key = self.id(obj)
    if key not in self.ids:
      self.ids[key] = self.len(self.objects)
      self.objects.append(obj)          # keeps obj alive, so its id stays unique
    return self.ids[key]

  def send(self, *attempts) -> None:
    """Sends the first of `attempts` that encodes (later ones force handles)."""
    for message in attempts:
      try:
        payload = self.encode(message, self.handle)
        break
      except self.BaseException:  # pylint: disable=broad-except
        continue
    data = self.frame(payload)
    while data:
      data = data[self.write(self.fd, data):]

  def recv(self):
    head = self._exactly(4)
    if head is None:
      return None
    body = self._exactly(self.from_bytes(head, "little"))
    return None if body is None else self.decode(body, self.objects.__getitem__)

  def _exactly(self, n):
    parts, left = [], n
    while left:
      chunk = self.read(self.fd, self.min(left, 1 << 20))
      if not chunk:
        return None
      parts.append(chunk)
      left -= self.len(chunk)
    return self.join(parts)

  def serve(self, namespace, names) -> None:
    """Sends the values of `names`, then answers requests until the socket closes."""
    self.flush()
    found = {n: namespace[n] for n in names if n in namespace}
    self.send(("ready", found, None),
              ("ready", {n: self.Forced(v) for n, v in found.items()}, None))
    while True:
      request = self.recv()
      if request is None:
        return
      kind, target, args = request[0], self.objects[request[1]], None
      try:
        if kind == "call":
          args, kwargs = request[2], request[3]
          result = target(*args, **kwargs)
        elif kind == "getattr":
          result = self.getattr(target, request[2])
        elif kind == "setattr":
          result = self.setattr(target, request[2], request[3])
        else:
          return
      except self.BaseException as exc:  # pylint: disable=broad-except
        self.flush()
        self.send(("raise", self.info(exc, names=self.names), None))
        continue
      self.flush()
      post = None
      if args is not None:
        for a in (*args, *kwargs.values()):
          if self.type(a) in self.mutable:
            post = (args, kwargs)           # arguments the call may have changed in place
            break
      self.send(("return", result, post), ("return", self.Forced(result), None))


def main(argv):
  """Runs the job in the file argv[1] (written by the host); argv[2] is the status fd."""
  job_path, status_fd = argv[1], int(argv[2])
  with open(job_path, "rb") as f:
    job = marshal.loads(f.read())[1]
  os.unlink(job_path)
  _set_limits(job["limits"])
  sys.path.extend(job["sys_path"])
  sys.argv = ["program.py"]
  serve = job.get("serve")
  server = _Server(serve["fd"], serve["codec"]) if serve else None
  os.write(status_fd, b"S")
  os.close(status_fd)
  program = job["program"]
  del job
  sources = {"program.py": program}
  module = _type(sys)("__main__")     # the program runs as a real __main__ module
  namespace = module.__dict__
  namespace.update(__builtins__=builtins, __file__="program.py")
  sys.modules["__main__"] = module
  try:
    code = compile(program, "program.py", "exec", dont_inherit=True)
  except SyntaxError as exc:
    _report(exc, sources)
  del program
  try:
    exec(code, namespace)  # pylint: disable=exec-used
  except SystemExit:
    raise
  except BaseException as exc:  # pylint: disable=broad-except
    _report(exc, sources)
  if server is None:
    return
  try:
    server.serve(namespace, serve["names"])
  except BaseException:  # pylint: disable=broad-except
    pass
  _flush()
  _os_exit(0)


if __name__ == "__main__":
  main(sys.argv)
