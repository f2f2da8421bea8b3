"""The console frontend through a pseudo-terminal.

argv: P2NER_BIN SERVER DIR. Starts `p2ner run --frontend console` on a pty,
then: help (with Tab completion), publish, sessions, stop, sessions, quit.
"""
import os
import pty
import select
import subprocess
import sys
import time

binary, server, folder = sys.argv[1], sys.argv[2], sys.argv[3]
master, slave = pty.openpty()
proc = subprocess.Popen(
    [binary, "run", "--listen", "127.0.0.1:0", "--server", server,
     "--token-file", os.path.join(folder, "console.token"),
     "--identity", os.path.join(folder, "console.key"), "--frontend", "console"],
    stdin=slave, stdout=slave, stderr=slave, cwd=folder, close_fds=True)
os.close(slave)
seen = b""


def expect(text, limit=20.0):
    global seen
    end = time.time() + limit
    while time.time() < end:
        if text.encode() in seen:
            at = seen.index(text.encode()) + len(text)
            before, seen = seen[:at], seen[at:]
            return before.decode(errors="replace")
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
    proc.kill()
    raise SystemExit(f"never saw {text!r}; got {seen.decode(errors='replace')!r}")


def send(line):
    os.write(master, line.encode())


try:
    expect("p2ner> ")
    send("help sto\t\r")          # Tab completes the command name
    expect("ends a session")
    expect("p2ner> ")
    send("publish cam input=synthetic bitrate_kbps=300\r")
    out = expect("p2ner> ")
    assert "s1 publishing 'cam'" in out, out
    send("sessions\r")
    out = expect("p2ner> ")
    assert "s1" in out and "publish" in out and "cam" in out, out
    send("stop s1\r")
    expect("stopping s1")
    expect("p2ner> ")
    deadline = time.time() + 15
    while True:
        send("sessions\r")
        out = expect("p2ner> ")
        if "ended" in out:
            break
        assert time.time() < deadline, out
        time.sleep(0.5)
    send("stop nope\r")
    out = expect("p2ner> ")
    assert "no session 'nope'" in out, out
    send("quit\r")
    assert proc.wait(timeout=20) == 0
    print("console ok")
finally:
    if proc.poll() is None:
        proc.kill()
