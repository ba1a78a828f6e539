"""MATH (Hendrycks et al. 2021) and MATH500 in the layout `MathTask` reads.

  python -m score_jax.data prepare math --out DATA_DIR [--from PATH]     # math/ and math500/
  python -m score_jax.data prepare math500 --out DATA_DIR [--from PATH]  # math500/ only

Writes (records in the form of `shared/data`):
  math/train.jsonl, math/test.jsonl   7,500 / 5,000 {"problem","level","type","solution",
                                      "unique_id"}, sorted by subject folder and number
  math/prm800k_style_train12k.reconstructed.jsonl
                                      12,000 = MATH minus MATH500 (the SCoRe training split,
                                      PRM800K's): test records then train records, in the form
                                      {"problem","solution","answer","subject","level":int,
                                      "unique_id"}; answer = the last \\boxed{} of the solution
  math500/test.jsonl                  500, PRM800K's test split in its order and form
`--from` takes any of these upstream forms (a file or a folder; forms can be mixed):
  - MATH.tar / MATH.tar.gz, or its unpacked folder: {train,test}/<subject>/<n>.json;
  - train.jsonl / test.jsonl with one record per such file and its unique_id (shared/data);
  - PRM800K's math_splits (train.jsonl 12,000 / test.jsonl 500, or the Hub's Parquet copy).
Without `--from`: the Hub datasets nlile/hendrycks-MATH-benchmark (the 12k / 500 split as
Parquet) and HuggingFaceH4/MATH-500 (test.jsonl). Which problems are MATH500, and in which
order, is `MATH500_IDS` (PRM800K's list). Built from shared/data's MATH records, or from
its 12k + MATH500 pair, all four files are byte-identical to shared/data's (the reference
sha256s below; `prepare` prints whether each one is).
"""

from __future__ import annotations

import json
import pathlib
import re
import tarfile
from typing import Sequence

from score_jax.data import common

HUB = [("nlile/hendrycks-MATH-benchmark", ["data/*.parquet"]),
       ("HuggingFaceH4/MATH-500", ["test.jsonl"])]
LICENSE = "MIT (Hendrycks et al., MATH; PRM800K's split: MIT, OpenAI)"
SUBJECTS = {"a": "algebra", "c": "counting_and_probability", "g": "geometry",
            "i": "intermediate_algebra", "n": "number_theory", "p": "prealgebra",
            "q": "precalculus"}
# PRM800K's MATH500 (prm800k/math_splits/test.jsonl), in its order: subject letter + number
# of test/<subject>/<number>.json.
MATH500_IDS = [f"test/{SUBJECTS[t[0]]}/{t[1:]}.json" for t in """
q807 i1994 a2584 n572 a1349 p1622 n515 q927 a2036 p1139 n1032 i1197 n737 g248 q1303 q990
i134 q1199 g434 i1000 a1098 i607 a1837 a2193 a2427 i1388 c525 p1840 q779 c666 n864 p1302
c134 a1072 c119 n627 i428 g967 a24 n45 p930 g627 a2214 i1454 p1558 g178 q285 a305 a1265
p1388 n1055 i1217 p951 q1105 p572 a187 a769 i1168 a722 p1247 i956 i1247 q675 i279 q1146
p1747 a2046 p1233 q1313 i207 n46 n516 g456 a2253 q24313 c1114 i623 a1004 i47 p192 i1849
a1035 a2700 i2046 a893 g353 p307 a567 a892 n357 p1761 a2023 c377 a873 p1646 q34 i662 p105
p1924 q1300 g183 i582 i431 i558 i362 p1804 i515 n914 i894 q44 i345 c23957 a2058 a2593
i1898 c1060 a2157 a2251 i232 p1733 i128 p505 a1332 g283 a972 a2232 i1063 n847 a661 g1140
n753 a246 p1686 p1807 i1126 p1297 i2022 n1257 c430 i1151 n156 n612 c159 q477 q43 i1408
a1519 i966 a988 n931 i964 q986 g172 c230 g880 c803 q117 i1410 a2570 a621 n521 a1255 p1655
a2517 q697 p1356 p1003 a478 c181 g802 a297 p1272 a841 a686 a351 i991 n598 g65 p1113 q659
p1908 a1275 p1922 a1082 i183 a1214 n978 a2199 a733 g702 c51 a109 g221 i1422 i2196 i591
a1937 n838 c508 p1907 p2086 n149 a291 i1555 i1510 q263 q541 c389 n1201 n234 p378 p1555
a2102 i102 c765 a907 p1436 n417 a864 c282 p1961 n89 g547 n183 q190 a2159 c71 q819 q1056
p2057 i986 a1578 i1354 q441 i1837 p153 q989 i337 a975 g229 p874 a1143 a2626 g254 p1251
i1210 a1787 i1123 q920 n1065 a1934 c894 a2064 p1458 c1009 q452 p1995 g473 a694 i149 q580
g347 p1317 g483 g826 a524 p1742 g226 n466 c913 a2551 n634 n533 p993 g686 a346 a1282 p1834
n691 p1512 n1287 p260 a1184 p1787 q768 i1411 i960 n631 q1172 i1300 a634 c25149 i90 a2486
n488 q1201 i754 n1172 q881 g1097 c339 p1044 p465 g965 i446 a2257 i1544 q695 g711 n203
a1842 n911 i1714 p1423 g1108 a791 a276 i2152 a2735 a425 g947 p954 a1936 c870 g465 g73 q742
i117 a2176 p1973 c216 a509 i190 i776 a1457 n483 a2592 p1730 n368 i1566 q801 a858 p1238
c737 i1572 a1529 a1338 a1547 c116 c238 n686 q826 q1281 c1014 a529 i1166 a1078 p1353 i860
i1407 q96 i1405 c14 a251 i690 n820 n109 a1199 g106 p1187 q1289 i955 g846 a2264 a1303 n427
g538 n1185 p1743 p1865 i1992 c188 i1111 a101 p1298 p2066 a170 a849 a1031 g795 a853 a2277
q902 a518 i1791 a114 p631 p977 p1991 p1784 g817 i1806 q1291 n928 c761 p1572 n132 a1960
q398 i1797 p65 p1227 i2146 a2680 a2391 n769 q681 a776 a1796 q145 q625 q1202 i2015 n1002
a1339 q1133 g843 a2743 i121 i1014 p2019 q499 i1462 n410 p1640 a2043 c10 a1553 n255 i199
a2080 p2037 a1343 a668 c731 i1779 a2430 p996 n1000 a2789 n13 n459 a1814 a2476 q323 c190
i1102 n342 p805 a2780 p914 a824 n679 a1425 i834 n72 q703 p1114 a224 a435 i158 p846 a2470
p1930 i752 c1003 p1252 n22 i1279 n1128 q1252 i1467 n1090 q1082 i101 c199 g477 n239 p1203
i1365 i1350 p1128 q356 a2779 i1930 i1981 i1232 g561 i1508 g615""".split()]
# sha256 of the files built from the full upstream (equal to shared/data's SHA256SUMS; the
# MATH500 one is also the official PRM800K Git-LFS object id).
REFERENCE = {
    "math/train.jsonl": "b854f31f592b2a8a09de9cd9010279c914b6c27a4cad96b6785100f2e62f06f3",
    "math/test.jsonl": "6ae93d20270f23a8a9cd13aace256cdc066082226ab31e0d4fe3a0350c30351f",
    "math/prm800k_style_train12k.reconstructed.jsonl":
        "e4f2d32a1eba82199620d46aa94eca2723b9dd09195c80fe0f4551d53565322e",
    "math500/test.jsonl": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
}
ORIGINAL_KEYS = ("problem", "level", "type", "solution", "unique_id")
PRM_KEYS = ("problem", "solution", "answer", "subject", "level", "unique_id")
_UID = re.compile(r"(?:^|/)(train|test)/([a-z_]+)/(\d+)\.json$")


def last_boxed_only_string(text: str) -> str | None:
  """The last \\boxed{...} of a solution (Hendrycks' function), or "\\boxed X" up to "$"
  when the last one has no braces (lm-eval's handling of the two MATH solutions like that)."""
  idx = text.rfind("\\boxed")
  if text.startswith("\\boxed ", max(idx, 0)):
    return "\\boxed " + text[idx + len("\\boxed "):].split("$")[0]
  if idx < 0:
    idx = text.rfind("\\fbox")
    if idx < 0:
      return None
  depth = 0
  for i in range(idx, len(text)):
    if text[i] == "{":
      depth += 1
    elif text[i] == "}":
      depth -= 1
      if depth == 0:
        return text[idx:i + 1]
  return None


def boxed_answer(solution: str) -> str | None:
  """remove_boxed(last_boxed_only_string(solution)): the gold answer of a MATH solution."""
  boxed = last_boxed_only_string(solution)
  if boxed is None:
    return None
  for left in ("\\boxed ", "\\boxed{", "\\fbox{"):
    if boxed.startswith(left):
      return boxed[len(left):] if left.endswith(" ") else boxed[len(left):-1]
  return None


def _sort_key(uid: str) -> tuple[str, str, int]:
  split, subject, number = _UID.search(uid).groups()
  return split, subject, int(number)


def _to_prm(rec: dict) -> dict:
  level = str(rec["level"]).removeprefix("Level ")
  answer = boxed_answer(rec["solution"])
  if answer is None:
    raise common.DataError(f"MATH {rec['unique_id']}: no \\boxed{{}} answer in its solution; "
                           "is it the upstream MATH file?")
  return {"problem": rec["problem"], "solution": rec["solution"], "answer": answer,
          "subject": rec["type"], "level": int(level) if level.isdigit() else level,
          "unique_id": rec["unique_id"]}


def _from_prm(rec: dict) -> dict:
  return {"problem": rec["problem"], "level": f"Level {rec['level']}", "type": rec["subject"],
          "solution": rec["solution"], "unique_id": rec["unique_id"]}


def _add(store: dict[str, dict], rec: dict, where: str) -> None:
  """Adds one record (original or PRM800K form) to `store` in the original form."""
  if "subject" in rec and "type" not in rec:
    common.check_fields([rec], {"problem": str, "solution": str, "subject": str,
                                "unique_id": str}, where)
    rec = _from_prm(rec)
  common.check_fields([rec], {"problem": str, "level": str, "type": str, "solution": str,
                              "unique_id": str}, where)
  if not _UID.search(rec["unique_id"]):
    raise common.DataError(f"{where}: unique_id {rec['unique_id']!r} is not "
                           "'<train|test>/<subject>/<n>.json'; is it the upstream MATH file?")
  uid = _UID.search(rec["unique_id"]).group(0).lstrip("/")
  store.setdefault(uid, {k: (uid if k == "unique_id" else rec[k]) for k in ORIGINAL_KEYS})


def _read_tar(path: pathlib.Path, store: dict[str, dict]) -> None:
  try:
    with tarfile.open(path) as tar:
      for member in tar:
        if member.isfile() and _UID.search(member.name):
          rec = json.loads(tar.extractfile(member).read().decode("utf-8"))
          rec["unique_id"] = _UID.search(member.name).group(0).lstrip("/")
          _add(store, rec, f"{path}:{member.name}")
  except (tarfile.TarError, OSError, json.JSONDecodeError) as e:
    raise common.DataError(f"{path}: cannot read the MATH tarball ({e}); re-download it") from None


def collect(roots: Sequence[pathlib.Path]) -> tuple[dict[str, dict], list[str]]:
  """All MATH records found under `roots` by unique_id (original form), and the inputs."""
  store: dict[str, dict] = {}
  used: list[str] = []
  for tar in common.find(roots, r"[^/]*\.tar(\.gz)?"):
    _read_tar(tar, store)
    used.append(str(tar))
  for path in common.find(roots, r"(train|test)/[a-z_]+/\d+\.json"):
    try:
      rec = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise common.DataError(f"{path}: not a MATH problem file ({e}); re-download it") from None
    rec["unique_id"] = _UID.search(path.as_posix()).group(0).lstrip("/")
    _add(store, rec, str(path))
  if store and not used:
    used.append(f"{len(store)} per-problem files {{train,test}}/<subject>/<n>.json")
  for path in common.find(roots, r"[^/]*(train|test)[^/]*\.(jsonl|parquet)"):
    if path.name.startswith("prm800k_style_train12k"):
      continue  # our own derived file: rebuilt from the rest
    records = common.read_records(path)
    if records and "problem" not in records[0]:
      continue  # another dataset's file (e.g. --from the data root holding gsm8k/)
    for i, rec in enumerate(records):
      _add(store, rec, f"{path} record {i}")
    used.append(str(path))
  return store, used


def build(roots: Sequence[pathlib.Path], which: str = "math") -> list[common.Folder]:
  """The output folders (math/ and math500/, or math500/ only) from the records found."""
  store, used = collect(roots)
  if not store:
    raise common.DataError(f"no MATH files under {', '.join(map(str, roots))}: expected "
                           "MATH.tar, {train,test}/<subject>/<n>.json, or train.jsonl / "
                           "test.jsonl (MATH or PRM800K form); pass --from the folder that "
                           "holds them")
  source = [common.describe_root(r) for r in roots] + [f"read: {u}" for u in used]
  m500 = set(MATH500_IDS)
  test500 = [_to_prm(store[u]) for u in MATH500_IDS if u in store]
  if not test500:
    raise common.DataError(f"none of the 500 MATH500 problems (test/<subject>/<n>.json of "
                           f"PRM800K's list) is under {', '.join(map(str, roots))}; pass "
                           "--from the full MATH test set or PRM800K's test.jsonl")
  folders = [common.Folder("math500", [common.OutFile(
      "test.jsonl", common.jsonl_bytes(test500, PRM_KEYS), len(test500),
      REFERENCE["math500/test.jsonl"], 500)],
      [f"test: {len(test500)} problems (MATH500) -> task 'math' split 'test'"],
      source, LICENSE)]
  if which == "math500":
    return folders
  uids = sorted(store, key=_sort_key)
  train = [store[u] for u in uids if u.startswith("train/")]
  test = [store[u] for u in uids if u.startswith("test/")]
  k12 = [_to_prm(r) for r in test + train if r["unique_id"] not in m500]
  if not k12:
    raise common.DataError(f"only MATH500 problems under {', '.join(map(str, roots))}; `prepare "
                           "math` needs all of MATH (MATH.tar, or PRM800K's train.jsonl too); "
                           "`prepare math500` builds MATH500 alone")
  files = [common.OutFile("prm800k_style_train12k.reconstructed.jsonl",
                          common.jsonl_bytes(k12, PRM_KEYS), len(k12),
                          REFERENCE["math/prm800k_style_train12k.reconstructed.jsonl"], 12000)]
  for name, recs, documented in (("train.jsonl", train, 7500), ("test.jsonl", test, 5000)):
    if recs:
      files.append(common.OutFile(name, common.jsonl_bytes(recs, ORIGINAL_KEYS), len(recs),
                                  REFERENCE[f"math/{name}"], documented))
  splits = [f"prm800k_style_train12k: {len(k12)} problems (MATH minus MATH500) -> "
            f"{common.holdout_split('math', len(k12))}",
            f"test.jsonl: {len(test)} problems -> split 'test_full'; train.jsonl: {len(train)}"]
  folders.insert(0, common.Folder("math", files, splits, source, LICENSE))
  return folders
