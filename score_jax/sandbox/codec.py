"""The strict plain-data codec between the sandboxed program and the verifier (stdlib only).

The verifier (`score_jax.sandbox.verifier`) and the sandboxed program's process (`driver`)
exchange values as bytes in this format; it runs in both processes, so it imports nothing
but the standard library and is exec'd there from a code object compiled on the host.

Encoded exactly (a value decodes to an object of the same builtin type): None, bool, int,
float (nan, inf, -0.0 kept), complex, str, bytes, bytearray, list, tuple, dict, set,
frozenset, range; dict key / value / item views (decoded as views of a fresh dict); the
builtin types in `NAMED_TYPES` by name (a test passes `int` to the function under test);
collections.deque and decimal.Decimal (by its string) as those types. Subclasses of the
builtins (namedtuple, Counter, OrderedDict, defaultdict, int subclasses, ...) become the
builtin, converted by the base type's C methods, which a subclass cannot override.
Iterators and generators are drained (at most `MAX_ITEMS` items) into a one-shot iterator
that raises at its end if the source was longer (or raised). Any other object becomes a
*handle* (tag H + a number the sender chose): the receiver's `handle` callback turns it
into whatever it stands for (an opaque remote reference in the verifier).

The encoder is built by `Encoder()` before untrusted code runs: it holds its own
references to the builtins it uses and tests types by identity, so a program that patches
builtins or `sys.modules` cannot change how honest values are encoded. Whatever bytes a
program sends, the decoder only builds plain data (or handles): it never evals, unpickles
or unmarshals, and enforces a size cap (`MAX_BYTES`) and a nesting cap (`MAX_DEPTH`).
"""

import struct

MAX_BYTES = 8 << 20
MAX_DEPTH = 100
MAX_ITEMS = 10000
MAX_TEXT = 2000           # exception messages and the like
NAMED_TYPES = ("bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int",
               "list", "object", "range", "set", "str", "tuple", "type")

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_C128 = struct.Struct("<dd")


class DecodeError(Exception):
  """The bytes are not a valid encoding (or exceed a cap)."""


class EncodeError(Exception):
  """The value cannot be encoded within the caps."""


def frame(payload: bytes) -> bytes:
  """A length-prefixed message."""
  return _U32.pack(len(payload)) + payload


def Encoder():  # pylint: disable=invalid-name
  """An `encode(value, handle) -> bytes` function that uses only references taken now.

  `handle(obj) -> int` is called for an object that is not plain data (its number goes
  into the encoding). Raises EncodeError past the caps (depth, size).
  """
  # pylint: disable=invalid-name
  _type, _len, _next, _str, _issubclass, _getattr = type, len, next, str, issubclass, getattr
  _None, _bool, _int, _float, _complex, _strt, _bytes = (None, bool, int, float, complex, str,
                                                         bytes)
  _bytearray, _tuple, _dict, _range = bytearray, tuple, dict, range
  _StopIteration, _Exception, _EncodeError = StopIteration, Exception, EncodeError
  _int_bytes, _bit_length, _encode_str = int.to_bytes, int.bit_length, str.encode
  _creal, _cimag = complex.real.__get__, complex.imag.__get__
  _tuple_slice, _dict_items, _slice_all = tuple.__getitem__, dict.items, slice(None)
  # dict.copy of a subclass that overrides __iter__ goes through its keys() / __getitem__;
  # dict.items(v) reads the dict's own storage.
  _to_plain = ((int, int.__index__), (float, float.__float__), (str, str.__str__),
               (bytes, bytes.__bytes__), (list, list.copy),
               (dict, lambda v: _dict(_dict_items(v))), (set, set.copy),
               (frozenset, frozenset.copy))
  _range_parts = (range.start.__get__, range.stop.__get__, range.step.__get__)
  _mro = type.__dict__["__mro__"].__get__
  _type_dict = type.__dict__["__dict__"].__get__
  d = {}
  _KEYS, _VALUES, _ITEMS = _type(d.keys()), _type(d.values()), _type(d.items())
  _SEQ_TAGS = {id(list): b"l", id(tuple): b"t", id(set): b"e", id(frozenset): b"z",
               id(_KEYS): b"K", id(_VALUES): b"V", id(_ITEMS): b"W"}
  import builtins  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  _modules = sys.modules
  _named = {id(getattr(builtins, n)): n.encode() for n in NAMED_TYPES}
  _exc_names = exception_names()
  _exception_info = exception_info
  _join = b"".join
  u32, i64, f64, c128 = _U32.pack, _I64.pack, _F64.pack, _C128.pack
  lo, hi, max_bytes, max_depth, max_items = -(1 << 63), 1 << 63, MAX_BYTES, MAX_DEPTH, MAX_ITEMS

  def encode(value, handle) -> bytes:
    out = []
    size = [0]

    def put(b):
      size[0] += _len(b)
      if size[0] > max_bytes:
        raise _EncodeError(f"value over {max_bytes} bytes")
      out.append(b)

    def enc(v, depth):
      if depth > max_depth:
        raise _EncodeError(f"value nested over {max_depth} deep (or cyclic)")
      t = _type(v)
      if v is _None:
        put(b"N")
      elif t is _bool:
        put(b"T" if v else b"F")
      elif t is _int:
        if lo <= v < hi:
          put(b"i" + i64(v))
        else:
          n = (_bit_length(v) + 8) // 8
          put(b"I" + u32(n))
          put(_int_bytes(v, n, "little", signed=True))
      elif t is _float:
        put(b"d" + f64(v))
      elif t is _complex:
        put(b"j" + c128(_creal(v), _cimag(v)))
      elif t is _strt:
        b = _encode_str(v, "utf-8", "surrogatepass")
        put(b"s" + u32(_len(b)))
        put(b)
      elif t is _bytes:
        put(b"b" + u32(_len(v)))
        put(v)
      elif t is _bytearray:
        put(b"a" + u32(_len(v)))
        put(_bytes(v))
      elif t is _dict:
        put(b"m" + u32(_len(v)))
        for k, x in _dict_items(v):
          enc(k, depth + 1)
          enc(x, depth + 1)
      elif id(t) in _SEQ_TAGS:
        items = [x for x in v]
        put(_SEQ_TAGS[id(t)] + u32(_len(items)))
        for x in items:
          enc(x, depth + 1)
      elif t is _range:
        put(b"r")
        for part in _range_parts:
          enc(part(v), depth + 1)
      elif id(v) in _named:              # the builtin types live as long as the process
        name = _named[id(v)]
        put(b"B" + u32(_len(name)))
        put(name)
      else:
        other(v, t, depth)

    def other(v, t, depth):
      for base, to_plain in _to_plain:
        if _issubclass(t, base):
          return enc(to_plain(v), depth)
      if _issubclass(t, _tuple):
        return enc(_tuple_slice(v, _slice_all), depth)
      if _issubclass(t, _complex):
        return enc(_complex(_creal(v), _cimag(v)), depth)
      collections, decimal = _modules.get("collections"), _modules.get("decimal")
      if collections is not _None and t is _getattr(collections, "deque", _None):
        items = [x for x in v]
        put(b"q" + u32(_len(items)))
        for x in items:
          enc(x, depth + 1)
        return _None
      if decimal is not _None and t is _getattr(decimal, "Decimal", _None):
        put(b"x")
        return enc(_str(v), depth + 1)
      if has(t, "__next__") and has(t, "__iter__"):
        return drain(v, depth)
      put(b"H" + u32(handle(v)))
      return _None

    def drain(it, depth):
      items, end, exc = [], 0, _None
      try:
        while _len(items) < max_items:
          items.append(_next(it))
        end = 1                        # truncated: there may be more
      except _StopIteration:
        pass
      except _Exception as e:  # pylint: disable=broad-except
        end, exc = 2, _exception_info(e, _type, _mro, _str, _exc_names)
      put(b"g" + u32(_len(items)))
      for x in items:
        enc(x, depth + 1)
      enc((end, exc), depth + 1)

    def has(t, name):
      try:
        for k in _mro(t):
          if name in _type_dict(k):
            return True
      except _Exception:  # pylint: disable=broad-except
        pass
      return False

    enc(value, 0)
    return _join(out)

  return encode


def exception_names() -> dict:
  """id(class) -> name of the builtin exception classes."""
  import builtins  # pylint: disable=import-outside-toplevel
  return {id(v): k for k, v in vars(builtins).items()
          if isinstance(v, type) and issubclass(v, BaseException)}


def exception_info(exc, _type=type, _mro=type.__dict__["__mro__"].__get__, _str=str,
                   names=None) -> tuple:
  """(name of the nearest builtin exception class of `exc`, message capped)."""
  names = names if names is not None else exception_names()
  name = "Exception"
  for k in _mro(_type(exc)):
    if id(k) in names:
      name = names[id(k)]
      break
  try:
    message = _str(exc)
    if _type(message) is not str:
      message = ""
  except Exception:  # pylint: disable=broad-except
    message = ""
  return name, message[:MAX_TEXT]


def decode(data, handle):
  """The value encoded in `data` (bytes); `handle(number)` builds each handle.

  Raises:
    DecodeError: malformed bytes, or over `MAX_BYTES` / `MAX_DEPTH`.
  """
  if len(data) > MAX_BYTES + 64:
    raise DecodeError(f"message over {MAX_BYTES} bytes")
  view = memoryview(data)
  pos = [0]

  def take(n):
    start = pos[0]
    end = start + n
    if end > len(view):
      raise DecodeError("truncated message")
    pos[0] = end
    return view[start:end]

  def count():
    return _U32.unpack(take(4))[0]

  def items(n, depth):
    if n > len(view) - pos[0]:
      raise DecodeError("item count beyond the message")
    return [dec(depth + 1) for _ in range(n)]

  def dec(depth):
    if depth > MAX_DEPTH + 2:
      raise DecodeError(f"value nested over {MAX_DEPTH} deep")
    tag = bytes(take(1))
    if tag == b"N":
      return None
    if tag == b"T":
      return True
    if tag == b"F":
      return False
    if tag == b"i":
      return _I64.unpack(take(8))[0]
    if tag == b"I":
      return int.from_bytes(take(count()), "little", signed=True)
    if tag == b"d":
      return _F64.unpack(take(8))[0]
    if tag == b"j":
      return complex(*_C128.unpack(take(16)))
    if tag == b"s":
      return str(take(count()), "utf-8", "surrogatepass")
    if tag == b"b":
      return bytes(take(count()))
    if tag == b"a":
      return bytearray(take(count()))
    if tag == b"l":
      return items(count(), depth)
    if tag == b"t":
      return tuple(items(count(), depth))
    if tag == b"e":
      return set(items(count(), depth))
    if tag == b"z":
      return frozenset(items(count(), depth))
    if tag == b"m":
      flat = items(2 * count(), depth)
      return dict(zip(flat[::2], flat[1::2]))
    if tag == b"r":
      args = items(3, depth)
      if not all(type(a) is int for a in args):
        raise DecodeError("range of non-integers")
      return range(*args)
    if tag == b"K":
      return dict.fromkeys(items(count(), depth)).keys()
    if tag == b"V":
      return dict(enumerate(items(count(), depth))).values()
    if tag == b"W":
      pairs = items(count(), depth)
      if not all(type(p) is tuple and len(p) == 2 for p in pairs):
        raise DecodeError("dict items that are not pairs")
      return dict(pairs).items()
    if tag == b"q":
      import collections  # pylint: disable=import-outside-toplevel
      return collections.deque(items(count(), depth))
    if tag == b"x":
      text = dec(depth + 1)
      if type(text) is not str or len(text) > MAX_TEXT:
        raise DecodeError("bad decimal")
      import decimal  # pylint: disable=import-outside-toplevel
      return decimal.Decimal(text)
    if tag == b"g":
      values = items(count(), depth)
      end = dec(depth + 1)
      return _one_shot(values, end)
    if tag == b"H":
      return handle(count())
    if tag == b"B":
      name = str(take(count()), "ascii")
      if name not in NAMED_TYPES:
        raise DecodeError(f"not a named type: {name!r:.40}")
      import builtins  # pylint: disable=import-outside-toplevel
      return getattr(builtins, name)
    raise DecodeError(f"unknown tag {tag!r}")

  try:
    value = dec(0)
  except DecodeError:
    raise
  except (TypeError, ValueError, OverflowError, UnicodeError, struct.error, ArithmeticError,
          RecursionError) as e:
    raise DecodeError(f"{type(e).__name__}: {e}") from None
  if pos[0] != len(view):
    raise DecodeError("trailing bytes")
  return value


def _one_shot(values, end):
  """A generator over `values` that ends as the drained source did."""
  if not (type(end) is tuple and len(end) == 2 and end[0] in (0, 1, 2)):
    raise DecodeError("bad iterator end")
  kind, exc = end
  if kind == 2 and not (type(exc) is tuple and len(exc) == 2
                        and all(type(x) is str for x in exc)):
    raise DecodeError("bad iterator exception")

  def gen():
    yield from values
    if kind == 1:
      raise RuntimeError(f"iterator longer than {MAX_ITEMS} items (not drained)")
    if kind == 2:
      raise builtin_exception(*exc)

  return gen()


def builtin_exception(name: str, message: str) -> BaseException:
  """An instance of the builtin `Exception` subclass called `name` (else Exception)."""
  import builtins  # pylint: disable=import-outside-toplevel
  cls = getattr(builtins, name, None) if isinstance(name, str) else None
  if not (isinstance(cls, type) and issubclass(cls, Exception)):
    cls = Exception
  try:
    return cls(message)
  except Exception:  # pylint: disable=broad-except
    return Exception(message)
