"""An agent loop, without an LLM: propose code, run it in the sandbox, read the error, retry.

    uv run examples/agent_loop.py [--backend userns|bubblewrap]

A coding agent's inner loop is "write code -> run it -> look at what happened -> fix it".
Here the "agent" is a deterministic script with a list of attempts (the first ones buggy,
as a model's first drafts often are), so the example runs offline, in a few seconds, and
always does the same thing. What it shows:

- staging the task's input files with ``put_bytes`` and fetching the answer with
  ``get_bytes``;
- running untrusted code in a ``network_mode="blocked"`` session;
- ``exec()`` (one shot: returncode, stdout, stderr as text) for quick checks, versus
  ``run()`` (a live process handle: stream output as it comes, then ``proc.termination``
  says how the process ended: an exit, a signal, a timeout kill...);
- a failing command is data, not an exception: the loop branches on ``returncode`` and
  feeds ``stderr`` back to the agent. Only ``check=True`` (or ``run_code``) raises.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import anyio

from union import sandbox as sb

# The task the "agent" is given, and its input.
TASK = (
    "Count the words in input/text.txt, ignoring case, punctuation and the stop words in "
    "input/config.json; write the `top` most common words to output/top.json."
)
TEXT = b"""\
The sandbox runs the code. The code reads the text, and the text is short.
A sandbox is a box; the box is closed. Code in the box cannot reach the network.
Nothing leaves the box.
"""
CONFIG = {"top": 2, "stop_words": ["the", "a", "is", "and", "in"]}


@dataclasses.dataclass
class Attempt:
    note: str  # what the agent "thinks" it is doing or fixing
    code: str


# The scripted agent's drafts, in order. Each one fixes what the previous one got wrong.
ATTEMPTS = [
    Attempt(
        "first draft",
        """\
import json, collections
config = json.load(open("input/config.json"))
words = open("input/text.txt").read().lower().split()
counts = collections.Counter(w for w in words if w not in config["stop_words"])
json.dump(counts.most_common(config["top"]), open("output/top.json", "w")
""",
    ),
    Attempt(
        "fix the SyntaxError: close the parenthesis",
        """\
import json, collections
config = json.load(open("input/config.json"))
words = open("input/text.txt").read().lower().split()
counts = collections.Counter(w for w in words if w not in config["stopwords"])
json.dump(counts.most_common(config["top"]), open("output/top.json", "w"))
""",
    ),
    Attempt(
        "fix the KeyError: the key is 'stop_words'; and fetch a better stop-word list online",
        """\
import json, collections, urllib.request
config = json.load(open("input/config.json"))
extra = urllib.request.urlopen("http://93.184.215.14/stopwords.txt", timeout=5).read()
stop = set(config["stop_words"]) | set(extra.decode().split())
words = open("input/text.txt").read().lower().split()
counts = collections.Counter(w for w in words if w not in stop)
json.dump(counts.most_common(config["top"]), open("output/top.json", "w"))
""",
    ),
    Attempt(
        "no network in here: use the given stop words; strip punctuation by hand",
        """\
import json, collections, string
config = json.load(open("input/config.json"))
text = open("input/text.txt").read().lower()
words, i = [], 0
while i < len(text):           # bug: `i` never advances on punctuation -> loops forever
    if text[i] in string.ascii_lowercase:
        j = i
        while j < len(text) and text[j] in string.ascii_lowercase:
            j += 1
        words.append(text[i:j])
        i = j
    elif text[i].isspace():
        i += 1
counts = collections.Counter(w for w in words if w not in config["stop_words"])
json.dump(counts.most_common(config["top"]), open("output/top.json", "w"))
""",
    ),
    Attempt(
        "it hung and was killed by the timeout: use a regex instead of the hand-made loop",
        """\
import json, collections, re
config = json.load(open("input/config.json"))
words = re.findall(r"[a-z]+", open("input/text.txt").read().lower())
counts = collections.Counter(w for w in words if w not in config["stop_words"])
top = counts.most_common(config["top"])
for word, n in top:
    print(f"{word}: {n}")
json.dump(top, open("output/top.json", "w"))
""",
    ),
]


class ScriptedAgent:
    """Stands in for an LLM: returns its next draft, given what the last one did."""

    def __init__(self, attempts: list[Attempt]) -> None:
        self._attempts = iter(attempts)

    def propose(self, feedback: str | None) -> Attempt | None:
        if feedback is not None:
            print(f"  agent reads: {feedback}")
        return next(self._attempts, None)


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


async def main(backend: str) -> None:
    print(f"task: {TASK}\n")
    async with sb.on_device.session(backend=backend, network_mode="blocked") as sbx:
        work = sbx.work_dir
        print(f"session work dir: {work} (backend {backend}, network blocked)")

        # Stage the inputs. put_bytes needs the parent directory to exist: make it with a
        # one-shot exec(); check=True turns a non-zero exit into an exception (we expect none).
        await sbx.exec("mkdir -p input output", check=True)
        await sbx.put_bytes(f"{work}/input/text.txt", TEXT)
        await sbx.put_bytes(f"{work}/input/config.json", json.dumps(CONFIG).encode())
        listing = await sbx.exec("ls -1 input")
        print(f"staged input/: {', '.join(listing.stdout.split())}\n")

        agent = ScriptedAgent(ATTEMPTS)
        feedback: str | None = None
        for step in range(1, len(ATTEMPTS) + 1):
            attempt = agent.propose(feedback)
            if attempt is None:
                raise SystemExit("the agent gave up")
            print(f"attempt {step}: {attempt.note}")
            await sbx.put_bytes(f"{work}/solution.py", attempt.code.encode())

            # A cheap check first, with exec(): does it even compile? exec() waits and hands
            # back an ExecResult(returncode, stdout, stderr); a non-zero exit is not raised.
            lint = await sbx.exec("python -m py_compile solution.py")
            if not lint.ok:
                print(f"  py_compile -> exit {lint.returncode}")
                feedback = f"py_compile failed: {last_line(lint.stderr)}"
                continue

            # The real run, with run(): a process handle returned at once. Stream stdout
            # live, then read stderr; a short timeout_s catches a hung draft.
            proc = await sbx.run("python solution.py", timeout_s=2)
            async for line in proc.iter_stdout_lines():
                print(f"  stdout: {line.rstrip()}")
            _, err = await proc.communicate_text()
            term = proc.termination
            assert term is not None
            print(
                f"  run -> returncode={proc.returncode} termination.kind={term.kind.value} "
                f"reason={term.reason or '(clean exit)'!r} runtime={term.runtime_ms} ms"
            )
            if proc.returncode == 0:
                break
            # Failure is data: turn it into feedback for the next draft.
            if term.kind == "timeout":  # a str enum: "exit", "signal", "timeout", "oom"...
                feedback = f"killed after {term.runtime_ms} ms ({term.reason}); no output"
            else:
                feedback = f"exit {proc.returncode}: {last_line(err)}"
        else:
            raise SystemExit("out of attempts")

        # Fetch the answer. get_bytes reads straight from the work dir (max_bytes caps it).
        raw = await sbx.get_bytes(f"{work}/output/top.json", max_bytes=1024 * 1024)
        top = json.loads(raw)
        print(f"\nfetched output/top.json after {step} attempts: {top}")
        assert top == [["box", 4], ["code", 3]], top

        # run_code() is the strict helper: it returns stdout and raises on failure.
        try:
            await sbx.run_code("import solution_that_does_not_exist")
        except sb.SandboxCommandError as exc:
            print(
                f"run_code() raised {type(exc).__name__}: exit {exc.result.returncode}, "
                f"{last_line(exc.result.stderr)}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="userns", choices=["bubblewrap", "userns"])
    args = parser.parse_args()
    anyio.run(main, args.backend)
