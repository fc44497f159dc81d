"""`mamba-slm chat` as a person uses it, through a pseudo-terminal: a turn, Ctrl-C in the middle
of a reply (the reply stops, the program does not), /set, /save, /reset, Ctrl-C at the prompt,
Ctrl-D to leave. Usage: chat_session.py MAMBA_SLM MODEL_DIR TMP_DIR"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from pty_session import PtySession  # noqa: E402

binary, model, tmp = sys.argv[1:4]
# 200 new tokens with EOS masked: a reply long enough to interrupt.
s = PtySession([binary, "chat", "--model", model, "--sample", "--seed", "1", "--max-new-tokens", "200",
                "--min-new-tokens", "200"])
s.expect(r"template: built-in ChatML")
s.expect(r"> ")

s.send("Hello there\r")  # Enter: the terminal turns \r into \n
m = s.expect(r"\[prompt (\d+) tokens, reply (\d+) tokens, [\d.]+ tok/s[^\]]*\]")
assert int(m.group(2)) == 200, m.group(0)
first_prompt = int(m.group(1))
s.expect(r"> ")
print("ok   a full reply of 200 tokens with prompt and reply counts and tok/s")

s.send("Tell me more\r")
s.expect(r"Tell me more\r?\n")
s.wait_for_more()  # the reply has started streaming
s.send("\x03")     # Ctrl-C
m = s.expect(r"\[interrupted; prompt (\d+) tokens, reply (\d+) tokens")
assert int(m.group(2)) < 200, m.group(0)
assert int(m.group(1)) > first_prompt, "the second turn's prompt holds the first turn"
s.expect(r"> ")
assert s.alive()
print(f"ok   Ctrl-C stopped the reply after {m.group(2)} tokens and the program kept running")

s.send("/set temperature 0.5\r")
s.expect(r"\(temperature = 0\.5\)")
s.send("/set top_p 7\r")
s.expect(r"error: .*top_p")
print("ok   /set changes a setting and refuses a bad value")

path = os.path.join(tmp, "conversation.json")
s.send(f"/save {path}\r")
s.expect(r"saved 4 messages")
roles = [m["role"] for m in json.load(open(path))]
assert roles == ["user", "assistant", "user", "assistant"], roles
print("ok   /save wrote the conversation")

s.send("/reset\r")
s.expect(r"conversation cleared")
s.send("\x03")  # Ctrl-C at the prompt: a fresh prompt, the program stays
s.expect(r"> ")
s.send("Again\r")
m = s.expect(r"\[prompt (\d+) tokens, reply (\d+) tokens")
# The second turn's prompt held the first turn's 200-token reply; after /reset one turn remains.
assert int(m.group(1)) < first_prompt + 20, m.group(0)
print("ok   /reset starts over (the prompt is one turn long again); Ctrl-C at the prompt is harmless")

s.send("\x04")  # Ctrl-D
code = s.wait_exit()
assert code == 0, code
print("ok   Ctrl-D leaves with status 0")
