"""A remote side of another tui-trainer version: `python fake_relay.py PROTOCOL VERSION [attach
--stdio RUN]` says hello with that protocol and version, then waits for its stdin to close."""

import json
import sys

print(json.dumps({"kind": "Hello", "protocol": int(sys.argv[1]), "version": sys.argv[2], "live": True}), flush=True)
sys.stdin.read()
