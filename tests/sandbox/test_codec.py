"""Host-side pieces of the verifier (no sandbox): the codec, test analysis, the verifier
process driven by a fake program that speaks the sandbox side of the protocol."""

import collections
import decimal
import itertools
import math
import socket
import struct
import threading
import time

import pytest

from score_jax.sandbox import codec
from score_jax.sandbox import judge as judge_lib
from score_jax.sandbox import testcode


def _round_trip(value):
  handles = []

  def handle(obj):
    handles.append(obj)
    return len(handles) - 1

  return codec.decode(codec.Encoder()(value, handle), lambda n: ("handle", handles[n]))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2 ** 200, -(2 ** 70), 1.5, -0.0, math.inf, 3 - 4j, "héllo \ud800",
    b"\x00\xff", bytearray(b"ab"), [1, [2, (3,)]], (), {"a": {1, 2}, 3: frozenset({4})},
    range(1, 10, 3), int, str, collections.deque([1, 2]), decimal.Decimal("1.10"),
])
def test_plain_values_round_trip_with_their_types(value):
  out = _round_trip(value)
  assert type(out) is type(value) and out == value


def test_nan_views_and_subclasses():
  assert math.isnan(_round_trip(math.nan))
  d = {"b": 1, "a": 2}
  assert list(_round_trip(d.keys())) == ["b", "a"] and _round_trip(d.keys()) == {"a", "b"}
  assert list(_round_trip(d.values())) == [1, 2]
  assert _round_trip(d.items()) == d.items()

  class Sneaky(int):
    def __eq__(self, other):
      return True

  out = _round_trip([Sneaky(7), collections.Counter("aab"),
                     collections.namedtuple("P", "x y")(1, 2)])
  assert out == [7, {"a": 2, "b": 1}, (1, 2)]
  assert [type(x) for x in out] == [int, dict, tuple]


def test_other_objects_become_handles_and_iterators_are_drained():
  obj = object()
  assert _round_trip([obj]) == [("handle", obj)]
  assert list(_round_trip(iter([1, 2]))) == [1, 2]
  endless = _round_trip(itertools.count())
  assert list(itertools.islice(endless, 3)) == [0, 1, 2]
  with pytest.raises(RuntimeError, match="longer than"):
    list(endless)
  with pytest.raises(ZeroDivisionError):
    list(_round_trip(1 // x for x in (1, 0)))


def test_the_encoder_refuses_cycles_depth_and_size():
  cyclic = []
  cyclic.append(cyclic)
  deep = []
  for _ in range(codec.MAX_DEPTH + 5):
    deep = [deep]
  for value in (cyclic, deep, "x" * (codec.MAX_BYTES + 1)):
    with pytest.raises(codec.EncodeError):
      codec.Encoder()(value, id)


@pytest.mark.parametrize("data", [
    b"", b"Q", b"i\x00", b"s" + struct.pack("<I", 10) + b"abc",
    b"l" + struct.pack("<I", 2 ** 31),                           # a count beyond the message
    b"NN",                                                        # trailing bytes
    b"e" + struct.pack("<I", 1) + b"l" + struct.pack("<I", 0),     # an unhashable set item
    b"B" + struct.pack("<I", 4) + b"eval",                         # not a named type
    b"l\x01\x00\x00\x00" * 200 + b"N",                               # too deep
    b"s" + struct.pack("<I", 2) + b"\xff\xfe",                     # not UTF-8
    b"g" + struct.pack("<I", 0) + b"N",                            # a bad iterator end
])
def test_the_decoder_rejects_malformed_bytes(data):
  with pytest.raises(codec.DecodeError):
    codec.decode(data, lambda n: n)


def test_unbound_names_come_from_the_program_builtins_and_modules_from_the_verifier():
  t = testcode.prepare(["assert add(1, 2) == abs(-3)", "assert sys.maxsize > helper()"],
                       setup="def helper():\n  return undefined_elsewhere")
  assert t.names == ("add", "undefined_elsewhere") and t.modules == ("sys",)
  assert t.source == ("def helper():\n  return undefined_elsewhere\n"
                      "assert add(1, 2) == abs(-3)\nassert sys.maxsize > helper()\n")
  # A name that the task says the program defines wins over the builtin (MBPP 126: `sum`).
  assert testcode.prepare(["assert sum(10, 15) == 6"], names=["sum"]).names == ("sum",)
  assert testcode.prepare(["assert sum([1]) == 1"]).names == ()
  # Names used in functions, comprehensions and classes count; locals do not.
  source = ("def check(candidate):\n  x = 1\n  assert candidate(x) == [f(i) for i in 'ab']\n"
            "class C:\n  y = g()\ncheck(entry)\n")
  assert testcode.prepare(source).names == ("entry", "f", "g")
  with pytest.raises(ValueError, match="test code does not parse"):
    testcode.prepare(["assert f(1 =="])


def _fake_program(sock, answer):
  """The driver's side of the protocol: `add` is handle 0; each call returns answer(*args)."""
  encode = codec.Encoder()

  def send(message):
    sock.sendall(codec.frame(encode(message, lambda obj: 0)))

  send(("ready", {"add": object()}, None))
  while True:
    head = sock.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
      return
    body = sock.recv(struct.unpack("<I", head)[0], socket.MSG_WAITALL)
    _, _, args, _ = codec.decode(body, lambda n: n)
    send(("return", answer(*args), None))


def _job(judge, tests, answer):
  ours, theirs = socket.socketpair()
  judge.submit(tests, theirs)
  theirs.close()
  thread = threading.Thread(target=_fake_program, args=(ours, answer))
  thread.start()
  verdict = judge.await_verdict(30)
  thread.join()
  ours.close()
  return verdict


def test_the_verifier_decides_and_ignores_a_stale_verdict():
  judge = judge_lib.Judge()
  try:
    tests = testcode.prepare(["assert add(1, 2) == 3", "assert abs(add(-5, 0)) == 5"])
    assert _job(judge, tests, lambda a, b: a + b)["passed"] is True
    verdict = _job(judge, tests, lambda a, b: 0)
    assert verdict["passed"] is False and verdict["reason"] == "AssertionError (tests.py line 1)"
    assert 'File "tests.py", line 1' in verdict["traceback"]
    # A job whose program never ran leaves its verdict unread; the next job skips it.
    ours, theirs = socket.socketpair()
    judge.submit(tests, theirs)
    theirs.close()
    ours.close()
    time.sleep(0.3)
    assert _job(judge, tests, lambda a, b: a + b)["passed"] is True
  finally:
    judge.close()
