#!/usr/bin/env python3
"""`make lint`: the Rust examples of README.md ("Writing a module") and of
the crate docs (src/lib.rs, a doctest) are code that `make test-template`
builds and tests. The first Rust block of each is the template's
src/lib.rs, from its first `use` line to the line before `#[cfg(test)]`;
any other Rust block of the README section is a run of lines of the
template's src/lib.rs or src/tests.rs (indentation aside)."""

import os
import re
import sys

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def blocks(lines):
    """The ```rust blocks in `lines`, each a list of lines."""
    out, cur = [], None
    for line in lines:
        if cur is None and re.match(r"```rust\b", line):
            cur = []
        elif cur is not None and line.startswith("```"):
            out.append(cur)
            cur = None
        elif cur is not None:
            cur.append(line)
    return out


def stripped(lines):
    return [l.strip() for l in lines]


lib = read("examples/hello/src/lib.rs").split("\n")
start = next(i for i, l in enumerate(lib) if l.startswith("use "))
end = next(i for i, l in enumerate(lib) if l.startswith("#[cfg(test)]"))
template = lib[start:end]
while template and not template[-1].strip():
    template.pop()
sources = {
    "examples/hello/src/lib.rs": stripped(template),
    "examples/hello/src/tests.rs":
        stripped(read("examples/hello/src/tests.rs").split("\n")),
}

readme = read("README.md").split("\n")
first = next(i for i, l in enumerate(readme) if l == "## Writing a module")
last = next(i for i in range(first + 1, len(readme))
            if readme[i].startswith("## "))
docs = [re.sub(r"^//! ?", "", l) for l in read("src/lib.rs").split("\n")
        if l.startswith("//!")]
# rustdoc's hidden lines
docs_blocks = [[l for l in b if not l.startswith("# ")] for b in blocks(docs)]

failed = []
for name, found in (("README.md", blocks(readme[first:last])),
                     ("src/lib.rs (crate docs)", docs_blocks)):
    if not found or found[0] != template:
        failed.append(f"{name}: its first Rust example is not "
                      "examples/hello/src/lib.rs")
    for block in found[1:]:
        b = stripped(block)
        if not any(b == src[i:i + len(b)]
                   for src in sources.values() for i in range(len(src))):
            failed.append(f"{name}: this Rust example is not in the "
                          "template's src/lib.rs or src/tests.rs:\n"
                          + "\n".join(block))
for f in failed:
    print("FAIL:", f)
if failed:
    sys.exit(1)
print("ok - the Rust examples of README.md and src/lib.rs are the template's")
