"""Atomic writes (common.atomic_io)."""

import json
import threading

from common.atomic_io import save_json


def test_threads_writing_one_file_each_leave_it_whole(tmp_path):
    # The studio's page handlers run in threads: two saves of one file (a double-clicked "Save names") once shared
    # a temporary name, and one rename could find the other's file gone or half-written.
    path, errors = tmp_path / "roles.json", []

    def write(k: int) -> None:
        try:
            for _ in range(30):
                save_json(path, {"writer": k, "rows": [k] * 20000})
        except Exception as e:  # noqa: BLE001 - any failure of a writer fails the test
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    data = json.loads(path.read_text())
    assert data["rows"] == [data["writer"]] * 20000
    assert [p.name for p in tmp_path.iterdir()] == ["roles.json"]
