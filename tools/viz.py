"""python tools/viz.py GRAPH.json [--out DIR]: render a graph dump to GRAPH.dot and GRAPH.html"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

from graphgpt.monitor import GuardedStdout  # noqa: E402
from graphgpt.viz import main  # noqa: E402

if __name__ == "__main__":
    sys.stdout = GuardedStdout(sys.stdout)  # `| head` reads the first path: the rest goes nowhere, quietly
    sys.exit(main())
