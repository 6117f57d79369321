"""coop_dag.util.files' memoised file hash (the one students use for tokenizer.json)."""

from __future__ import annotations

import os

from coop_dag.util.files import file_sha256, file_sha256_memo


def test_file_sha256_memo_follows_the_file(tmp_path):
    f = tmp_path / "tokenizer.json"
    f.write_text("one")
    first = file_sha256_memo(f)
    assert first == file_sha256(f)
    assert file_sha256_memo(str(f)) == first  # same file, either spelling
    f.write_text("two!")  # another size: hashed again
    assert file_sha256_memo(f) == file_sha256(f) != first
    st = f.stat()
    f.write_text("thr!")  # same size, a new mtime: hashed again
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_sha256_memo(f) == file_sha256(f)
