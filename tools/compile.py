"""python tools/compile.py model.py [--out compiled/] [--data FILE] [--target NAME] [--set KEY=VALUE ...]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

from graphgpt.compile_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
