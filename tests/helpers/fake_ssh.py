"""A stand-in for the ssh client where no sshd can run: `python fake_ssh.py [ssh options] -- HOST
REMOTE_CMD` runs REMOTE_CMD here with sh -c (this process becomes it, so killing it drops the link).
While the file named by $FAKE_SSH_BLOCK exists it fails as an unreachable host does (exit 255)."""

import os
import sys

argv = sys.argv[1:]
block = os.environ.get("FAKE_SSH_BLOCK")
if block and os.path.exists(block):
    print("ssh: connect to host box port 22: Network is unreachable (fake_ssh)", file=sys.stderr)
    sys.exit(255)
cmd = argv[argv.index("--") + 2]
os.execvp("sh", ["sh", "-c", "exec " + cmd])  # one process: killing it drops the link
