"""``python -m mdd run|sweep|<tool> ...``: what the console scripts do, for spawned workers."""

import sys

from mdd.cli import main, run_main, sweep_main

commands = {"run": run_main, "sweep": sweep_main}
arguments = sys.argv[1:]
if arguments and arguments[0] in commands:
    sys.exit(commands[arguments[0]](arguments[1:]))
sys.exit(main(arguments))
