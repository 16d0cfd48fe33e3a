"""Subprocess target: open a deepssim store read-write and hold it (as a long
registration would) until killed.  Prints ``HELD`` once the lock is taken."""
from __future__ import annotations

import sys
import time

from deepssim.store.database import Store

if __name__ == "__main__":
    with Store(sys.argv[1], wait_s=30):
        print("HELD", flush=True)
        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 600)
