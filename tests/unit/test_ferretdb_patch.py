"""How deploy/local/infra.py patches FerretDB's source before building it: exactly, or not
at all (a patch written against other upstream text must fail the build, not half-apply)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.servers import local_script

infra = local_script("infra")

PATCH = """why: commentary before the first file header is ignored

--- a/pkg/insert.go
+++ b/pkg/insert.go
@@ -2,3 +2,4 @@
   for {
-    break
+    stop()
+    break
   }
@@ -8,2 +9,2 @@
 func stop() {
-}
+} // done
"""

UPSTREAM = "package pkg\n  for {\n    break\n  }\n\n// filler\n\nfunc stop() {\n}\n"


def write_tree(root: Path, text: str) -> Path:
    (root / "pkg").mkdir(parents=True)
    target = root / "pkg" / "insert.go"
    target.write_text(text)
    return target


def test_a_patch_applies_every_hunk_at_its_line(tmp_path: Path) -> None:
    patch = tmp_path / "fix.patch"
    patch.write_text(PATCH)
    target = write_tree(tmp_path / "src", UPSTREAM)
    infra.apply_patch(patch, tmp_path / "src")
    assert target.read_text() == (
        "package pkg\n  for {\n    stop()\n    break\n  }\n\n// filler\n\n"
        "func stop() {\n} // done\n"
    )


@pytest.mark.parametrize(
    "upstream",
    [
        UPSTREAM.replace("    break", "    continue"),  # the text changed
        "// a new first line\n" + UPSTREAM,  # the same text, moved
    ],
    ids=["changed", "moved"],
)
def test_a_patch_refuses_upstream_text_it_was_not_written_for(
    tmp_path: Path, upstream: str
) -> None:
    patch = tmp_path / "fix.patch"
    patch.write_text(PATCH)
    target = write_tree(tmp_path / "src", upstream)
    with pytest.raises(infra.InfraError, match="differs from the patch"):
        infra.apply_patch(patch, tmp_path / "src")
    assert target.read_text() == upstream  # nothing written


def test_a_hunk_without_context_is_refused(tmp_path: Path) -> None:
    # Its old text is empty, which "matches" at any line: it could not tell a moved upstream.
    patch = tmp_path / "fix.patch"
    patch.write_text("--- a/pkg/insert.go\n+++ b/pkg/insert.go\n@@ -2,0 +3 @@\n+    stop()\n")
    target = write_tree(tmp_path / "src", UPSTREAM)
    with pytest.raises(infra.InfraError, match="no context lines"):
        infra.apply_patch(patch, tmp_path / "src")
    assert target.read_text() == UPSTREAM


def test_the_ferretdb_patches_go_in_their_order_and_are_in_the_binary_key() -> None:
    patches = infra._ferretdb_patches()
    assert [p.name for p in patches] == [
        "01-ordered-insert.patch",
        "02-insert-transactions.patch",
        "03-sjson-marshal.patch",
    ]
    files = {
        "01-ordered-insert.patch": ["internal/handler/msg_insert.go"],
        "02-insert-transactions.patch": ["internal/handler/msg_insert.go"],
        "03-sjson-marshal.patch": [
            "internal/handler/sjson/schema.go",
            "internal/handler/sjson/string.go",
            "internal/handler/sjson/string_test.go",
        ],
    }
    for patch in patches:
        hunks = infra._parse_patch(patch.read_text(), patch.name)
        assert list(hunks) == files[patch.name]
        # A binary built before a patch changed is not reused.
        assert patch in infra._ferretdb_inputs()
