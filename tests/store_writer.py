"""Records one run whose results arrive one at a time, for tests/test_store.py; not a test module itself.

Run as ``python store_writer.py STORE N GATE``: results are produced lazily inside the store's
transaction.  Before producing result i (i ≥ 1) it prints ``inserted i`` (results 0..i-1 are then in the
open transaction) and waits until the file ``GATE/go`` exists — so a test can read the store, or kill
this process, in the middle of the transaction.  On success it prints ``committed RUN_ID``.
"""

import os
import sys
import time
from collections.abc import Iterator

from constraintdsl.compare.store import ResultRecord, RunStore


def main() -> int:
    """Record the run; see the module docstring."""
    path, count, gate = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    def results() -> Iterator[ResultRecord]:
        for i in range(count):
            if i:
                print(f"inserted {i}", flush=True)
                while not os.path.exists(os.path.join(gate, "go")):
                    time.sleep(0.01)
            yield ResultRecord(f"variant-{i}", f"hash-{i}", f"spec{i}.cdsl", f"clamp a >= {i}", {"i": i})

    run = RunStore(path).record(
        command="cdsl compare", model="tiny", revision="r1", inputs_hash="inputs", settings={}, results=results()
    )
    print(f"committed {run.id}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
